"""Answer one Modbus request PDU for one meter, pure: request bytes in, reply bytes out.

Functions 1, 2, 3, 4, 5, 6, 15 and 16. A request the meter cannot honour gets the
standard exception reply: 0x01 illegal function, 0x02 illegal data address, 0x03
illegal data value (bad count, bad coil value, length that does not match).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from meter_sim.physics import MeterModel
from meter_sim.registers import (
    ILLEGAL_FUNCTION,
    ILLEGAL_VALUE,
    MapLayout,
    ModbusException,
)
from protocol.modbus.pdu import (
    MAX_READ_BITS,
    MAX_READ_REGISTERS,
    MAX_WRITE_COILS,
    MAX_WRITE_REGISTERS,
    exception_pdu,
    pack_bits,
    unpack_bits,
)
from protocol.regmap import Table

_READ_TABLES = {1: Table.COIL, 2: Table.DISCRETE_INPUT, 3: Table.HOLDING, 4: Table.INPUT}
_ADDR_COUNT = struct.Struct(">HH")


@dataclass(slots=True)
class SimMeter:
    """One meter as served: its physics and the registers the gateway wrote to it."""

    model: MeterModel
    stored: dict[int, int] = field(default_factory=dict)


def answer(
    layout: MapLayout, meter: SimMeter, pdu: bytes, now: float, relay_actuates: bool = True
) -> bytes:
    """The reply PDU to ``pdu`` (an exception reply when the request is refused)."""
    if not pdu:
        return exception_pdu(0, ILLEGAL_FUNCTION)
    fn = pdu[0]
    try:
        return _answer(layout, meter, fn, pdu, now, relay_actuates)
    except ModbusException as exc:
        return exception_pdu(fn, exc.code)


def _answer(  # noqa: PLR0917 - private, called once
    layout: MapLayout, meter: SimMeter, fn: int, pdu: bytes, now: float, relay_actuates: bool
) -> bytes:
    table = _READ_TABLES.get(fn)
    if table is not None:
        if len(pdu) != 5:
            raise ModbusException(ILLEGAL_VALUE)
        address, count = _ADDR_COUNT.unpack_from(pdu, 1)
        bit_table = fn <= 2
        if not 1 <= count <= (MAX_READ_BITS if bit_table else MAX_READ_REGISTERS):
            raise ModbusException(ILLEGAL_VALUE)
        if bit_table:
            bits = layout.read_bits(
                table, address, count, model=meter.model, stored=meter.stored, now=now
            )
            data = pack_bits(bits)
            return bytes((fn, len(data))) + data
        regs = layout.read_registers(
            table, address, count, model=meter.model, stored=meter.stored, now=now
        )
        return bytes((fn, 2 * count)) + regs
    if fn in (5, 6):
        if len(pdu) != 5:
            raise ModbusException(ILLEGAL_VALUE)
        address, value = _ADDR_COUNT.unpack_from(pdu, 1)
        if fn == 5:
            if value not in (0x0000, 0xFF00):
                raise ModbusException(ILLEGAL_VALUE)
            layout.write(
                Table.COIL,
                address,
                [int(value == 0xFF00)],
                model=meter.model,
                stored=meter.stored,
                now=now,
                relay_actuates=relay_actuates,
            )
        else:
            layout.write(
                Table.HOLDING, address, [value], model=meter.model, stored=meter.stored, now=now
            )
        return pdu
    if fn in (15, 16):
        if len(pdu) < 6:
            raise ModbusException(ILLEGAL_VALUE)
        address, count = _ADDR_COUNT.unpack_from(pdu, 1)
        byte_count = pdu[5]
        data = pdu[6:]
        if fn == 15:
            if not 1 <= count <= MAX_WRITE_COILS or byte_count != (count + 7) // 8:
                raise ModbusException(ILLEGAL_VALUE)
        elif not 1 <= count <= MAX_WRITE_REGISTERS or byte_count != 2 * count:
            raise ModbusException(ILLEGAL_VALUE)
        if len(data) != byte_count:
            raise ModbusException(ILLEGAL_VALUE)
        if fn == 15:
            bits = list(unpack_bits(data, count))
            layout.write(
                Table.COIL,
                address,
                bits,
                model=meter.model,
                stored=meter.stored,
                now=now,
                relay_actuates=relay_actuates,
            )
        else:
            values = list(struct.unpack(f">{count}H", data))
            layout.write(
                Table.HOLDING, address, values, model=meter.model, stored=meter.stored, now=now
            )
        return pdu[:5]
    raise ModbusException(ILLEGAL_FUNCTION)
