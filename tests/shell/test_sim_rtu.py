"""RTU works over a pseudo-terminal pair (pymodbus serial client via pyserial) and over TCP, stays silent for absent units, and emulates wire time at 9600 baud within 10% of the arithmetic (never under it)."""

from __future__ import annotations

import asyncio
import struct
import time

import pytest
import serial
from pymodbus.exceptions import ModbusIOException
from pymodbus.framer import FramerType

from meter_sim.clock import VirtualClock
from meter_sim.simulator import Simulator
from protocol.modbus import crc16, rtu_frame
from protocol.regmap import Table
from tests.shell.conftest import SerialConnect, TcpConnect
from tests.support.register_images import decode_block

pytestmark = pytest.mark.asyncio


async def test_rtu_over_a_pty_with_pyserial(modbus_serial: SerialConnect) -> None:
    clock = VirtualClock()
    async with Simulator.start(meters=3, tcp_port=None, rtu_pty=True, clock=clock, seed=5) as sim:
        assert sim.rtu_pty_path is not None
        sim.set_load(2, 3600)
        client = await modbus_serial(sim.rtu_pty_path)
        rr = await client.read_input_registers(0, count=32, device_id=2)
        assert not rr.isError(), rr
        values = decode_block(sim.regmap, Table.INPUT, 0, rr.registers)
        assert values["serial_number"] == sim.layout.serial_number(2)
        assert values["active_power"] == 3600
        clock.advance(10)
        assert not (await client.write_coil(0, False, device_id=2)).isError()
        rr2 = await client.read_input_registers(1, count=4, device_id=2)
        e = decode_block(sim.regmap, Table.INPUT, 1, rr2.registers)["energy_import"]
        assert e == int(str(values["energy_import"])) + 10
        assert sim.state(2)["relay_closed"] is False
        with pytest.raises(ModbusIOException):  # no meter 9 on the bus: no reply at all
            await client.read_input_registers(0, count=1, device_id=9)


async def test_rtu_over_tcp_with_the_rtu_framer(modbus_tcp: TcpConnect) -> None:
    async with Simulator.start(
        meters=2, tcp_port=None, rtu_tcp_port=0, map_name="sdm120", clock=VirtualClock(), seed=5
    ) as sim:
        assert sim.rtu_tcp_address is not None
        sim.set_load(1, 1150)
        client = await modbus_tcp(sim.rtu_tcp_address, framer=FramerType.RTU)
        rr = await client.read_input_registers(0x0C, count=2, device_id=1)
        assert not rr.isError(), rr
        (power,) = struct.unpack(">f", struct.pack(">2H", *rr.registers))
        assert power == 1150.0


async def _rtu_round_trip(
    address: tuple[str, int], request: bytes, reply_len: int, tries: int = 1
) -> float:
    """Seconds from writing ``request`` to holding the whole reply; the best of ``tries``
    (scheduling on a busy machine only ever adds to the emulated time)."""
    reader, writer = await asyncio.open_connection(*address)
    best = float("inf")
    try:
        for _ in range(tries):
            t0 = time.perf_counter()
            writer.write(request)
            reply = await asyncio.wait_for(reader.readexactly(reply_len), 5)
            best = min(best, time.perf_counter() - t0)
            assert crc16(reply[:-2]) == int.from_bytes(reply[-2:], "little")
    finally:
        writer.close()
        await writer.wait_closed()
    return best


@pytest.mark.parametrize("count", [12, 32])
async def test_wire_time_at_9600_baud_is_within_ten_percent(count: int) -> None:
    async with Simulator.start(
        meters=1, tcp_port=None, rtu_tcp_port=0, baud=9600, clock=VirtualClock(), seed=5
    ) as sim:
        assert sim.rtu_tcp_address is not None
        request = rtu_frame(1, struct.pack(">BHH", 4, 0, count))
        reply_len = 5 + 2 * count
        char = 11 / 9600
        expected = (len(request) + 3.5 + reply_len) * char
        elapsed = await _rtu_round_trip(sim.rtu_tcp_address, request, reply_len, tries=5)
    assert elapsed == pytest.approx(expected, rel=0.10)
    assert elapsed >= expected  # never faster than a real line


async def test_wire_time_of_a_full_125_register_reply_and_bus_serialisation() -> None:
    async with Simulator.start(
        meters=2,
        tcp_port=None,
        rtu_tcp_port=0,
        baud=9600,
        map_name="sdm120",
        clock=VirtualClock(),
        seed=5,
    ) as sim:
        assert sim.rtu_tcp_address is not None
        request = rtu_frame(1, struct.pack(">BHH", 4, 0, 125))
        reply_len = 5 + 250
        char = 11 / 9600
        one = (len(request) + 3.5 + reply_len) * char
        elapsed = await _rtu_round_trip(sim.rtu_tcp_address, request, reply_len, tries=3)
        assert elapsed == pytest.approx(one, rel=0.10)
        # Two clients at once share one wire: the second reply waits for the first.
        both = await asyncio.gather(
            _rtu_round_trip(sim.rtu_tcp_address, request, reply_len),
            _rtu_round_trip(sim.rtu_tcp_address, rtu_frame(2, request[1:-2]), reply_len),
        )
    assert max(both) == pytest.approx(2 * one + 3.5 * char, rel=0.10)


async def test_pyserial_opens_the_printed_pty_path() -> None:
    async with Simulator.start(
        meters=1, tcp_port=None, rtu_pty=True, clock=VirtualClock(), seed=5
    ) as sim:
        assert sim.rtu_pty_path is not None
        port = serial.Serial(sim.rtu_pty_path, 19200, timeout=2)
        try:
            port.write(rtu_frame(1, struct.pack(">BHH", 4, 0, 1)))
            reply = await asyncio.to_thread(port.read, 7)
        finally:
            port.close()
    assert reply == rtu_frame(1, bytes((4, 2, 0, 1)))
