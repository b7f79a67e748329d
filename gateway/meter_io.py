"""Read and act on one meter through its register map: the gateway's meter driver on the wire.

Any map works: points are found by their canonical names (``energy_import``,
``active_power``, ``status`` ...), units are converted here once (energy to integer Wh,
rounded down so that deltas of a cumulative register never charge energy twice), and
the reads are planned per map. A failed or undecodable read raises
:class:`~gateway.modbus_port.MeterIOError` and yields no snapshot at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal

from gateway.modbus_port import IOFailure, MeterIOError, ModbusPort
from protocol import modbus
from protocol.codec import Value, decode, encode, physical
from protocol.errors import DecodeError
from protocol.read_plan import BlockRead, plan_reads
from protocol.regmap import Point, RegisterMap, Table

_POLLED = (
    "energy_import",
    "active_power",
    "voltage",
    "status",
    "keypad_seq",
    "keypad_digits",
)
_ENERGY_FACTORS = {"Wh": Decimal(1), "kWh": Decimal(1000)}
_POWER_FACTORS = {"W": Decimal(1), "kW": Decimal(1000)}


@dataclass(frozen=True, slots=True)
class MeterSnapshot:
    """One good read of a meter: what the core needs, in integer base units."""

    energy_import_wh: int
    power_w: int | None
    voltage_v: float | None
    relay_closed: bool | None
    flags: frozenset[str]
    keypad_seq: int | None
    keypad_digits: str | None


def energy_wh(point: Point, value: Value) -> int:
    """A cumulative energy register in whole Wh, rounded down."""
    factor = _ENERGY_FACTORS.get(point.unit)
    if factor is None:
        raise DecodeError(f"{point.name}: unit {point.unit!r} is not an energy unit", ())
    wh = (physical(point, value) * factor).to_integral_value(ROUND_FLOOR)
    if wh < 0:
        raise DecodeError(f"{point.name}: negative energy {wh} Wh", ())
    return int(wh)


def power_w(point: Point, value: Value) -> int:
    factor = _POWER_FACTORS.get(point.unit)
    if factor is None:
        raise DecodeError(f"{point.name}: unit {point.unit!r} is not a power unit", ())
    return int((physical(point, value) * factor).to_integral_value(ROUND_HALF_EVEN))


def snapshot_from(regmap: RegisterMap, values: dict[str, Value]) -> MeterSnapshot:
    """Turn decoded point values into a snapshot (pure)."""
    energy = energy_wh(regmap.point("energy_import"), values["energy_import"])
    power = (
        power_w(regmap.point("active_power"), values["active_power"])
        if "active_power" in values
        else None
    )
    voltage: float | None = None
    if "voltage" in values:
        v = float(physical(regmap.point("voltage"), values["voltage"]))
        voltage = v if math.isfinite(v) else None
    flags: frozenset[str] = frozenset()
    relay: bool | None = None
    if "status" in values:
        status = regmap.point("status")
        raw = values["status"]
        assert isinstance(raw, int)
        flags = frozenset(name for i, name in enumerate(status.bits) if raw >> i & 1)
        if "relay_closed" in status.bits:
            relay = "relay_closed" in flags
    seq = values.get("keypad_seq")
    digits = values.get("keypad_digits")
    return MeterSnapshot(
        energy_import_wh=energy,
        power_w=power,
        voltage_v=voltage,
        relay_closed=relay,
        flags=flags,
        keypad_seq=seq if isinstance(seq, int) else None,
        keypad_digits=digits if isinstance(digits, str) else None,
    )


def _read_request(unit: int, block: BlockRead) -> modbus.Request:
    if block.table is Table.INPUT:
        return modbus.read_input(unit, block.start, block.count)
    if block.table is Table.HOLDING:
        return modbus.read_holding(unit, block.start, block.count)
    if block.table is Table.COIL:
        return modbus.read_coils(unit, block.start, block.count)
    return modbus.Request(unit, modbus.Function.READ_DISCRETE_INPUTS, block.start, block.count)


class MeterIO:
    """Reads and writes of one meter model (register map) on any port."""

    def __init__(self, regmap: RegisterMap) -> None:
        self.regmap = regmap
        self.plan = plan_reads(regmap, [n for n in _POLLED if regmap.has(n)])

    async def read(self, port: ModbusPort, unit: int) -> MeterSnapshot:
        values: dict[str, Value] = {}
        for block in self.plan:
            regs = await port.request(_read_request(unit, block))
            try:
                for p in block.points:
                    values[p.name] = decode(p, regs[p.address - block.start : p.end - block.start])
            except DecodeError as exc:
                raise MeterIOError(unit, IOFailure.GARBLED, str(exc)) from exc
        try:
            return snapshot_from(self.regmap, values)
        except DecodeError as exc:
            raise MeterIOError(unit, IOFailure.GARBLED, str(exc)) from exc

    async def read_relay(self, port: ModbusPort, unit: int) -> bool:
        """The relay coil as the meter reports it (the read-back after a command)."""
        p = self.regmap.point("relay")
        (bit,) = await port.request(modbus.read_coils(unit, p.address, 1))
        return bool(bit)

    async def write_relay(self, port: ModbusPort, unit: int, closed: bool) -> None:
        p = self.regmap.point("relay")
        await port.request(modbus.write_coil(unit, p.address, closed))

    async def write_points(self, port: ModbusPort, unit: int, values: dict[str, Value]) -> None:
        """Write holding-register points, contiguous ones in one request."""
        points = sorted((self.regmap.point(n) for n in values), key=lambda p: p.address)
        if any(p.table is not Table.HOLDING for p in points):
            raise ValueError("only holding registers are writable")
        encoded = [(p, encode(p, values[p.name])) for p in points]
        run: list[int] = []
        start = -1
        for p, regs in encoded:
            if run and p.address == start + len(run) and len(run) + len(regs) <= 123:
                run += regs
                continue
            if run:
                await port.request(modbus.write_registers(unit, start, run))
            start, run = p.address, list(regs)
        if run:
            await port.request(modbus.write_registers(unit, start, run))
