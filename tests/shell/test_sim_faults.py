"""Every fault type is observable from a Modbus client: timeout, bad CRC, exception, slow, truncated, garbled, reset, vanish, stuck relay, energy reset; per meter and bus-wide; a seed replays the same faults."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time

import pytest
from pymodbus.exceptions import ModbusIOException

from meter_sim.clock import VirtualClock
from meter_sim.faults import FaultKind, FaultSpec
from meter_sim.simulator import Simulator
from protocol.modbus import crc16, rtu_frame
from tests.shell.conftest import TcpConnect

pytestmark = pytest.mark.asyncio

READ_1 = struct.pack(">BHH", 4, 0, 1)  # map_version: reply PDU 04 02 00 01


def mbap(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


async def read_some(address: tuple[str, int], payload: bytes, quiet: float = 0.5) -> bytes:
    """Send raw bytes, collect whatever comes back until ``quiet`` seconds of silence."""
    reader, writer = await asyncio.open_connection(*address)
    data = b""
    try:
        writer.write(payload)
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(4096), quiet)
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return data


async def test_timeout_gives_no_reply(modbus_tcp: TcpConnect) -> None:
    async with Simulator.start(meters=2, clock=VirtualClock(), seed=1) as sim:
        sim.inject_fault(1, "timeout")
        client = await modbus_tcp(sim.tcp_address, wait=0.3)
        with pytest.raises(ModbusIOException):
            await client.read_input_registers(0, count=1, device_id=1)
        rr = await client.read_input_registers(0, count=1, device_id=2)
        assert rr.registers == [1]  # the other meter is fine


async def test_exception_reply_busy_and_a_chosen_code(modbus_tcp: TcpConnect) -> None:
    async with Simulator.start(meters=2, clock=VirtualClock(), seed=1) as sim:
        sim.inject_fault(1, "exception")
        sim.inject_fault(2, "exception", code=4)
        client = await modbus_tcp(sim.tcp_address)
        busy = await client.read_input_registers(0, count=1, device_id=1)
        failure = await client.read_input_registers(0, count=1, device_id=2)
    assert busy.isError()
    assert busy.exception_code == 0x06
    assert failure.exception_code == 0x04


async def test_slow_reply_arrives_after_the_delay_and_keeps_pipelined_order() -> None:
    async with Simulator.start(meters=2, clock=VirtualClock(), seed=1) as sim:
        sim.inject_fault(1, "slow", delay=0.3)
        t0 = time.perf_counter()
        data = await read_some(sim.tcp_address, mbap(1, 1, READ_1) + mbap(2, 2, READ_1), quiet=0.6)
        elapsed = time.perf_counter() - t0
    assert data == mbap(1, 1, b"\x04\x02\x00\x01") + mbap(2, 2, b"\x04\x02\x00\x01")
    assert elapsed >= 0.3


async def test_truncated_and_garbled_replies_over_tcp() -> None:
    async with Simulator.start(meters=2, clock=VirtualClock(), seed=1) as sim:
        good = mbap(7, 1, b"\x04\x02\x00\x01")
        sim.inject_fault(1, "truncated")
        truncated = await read_some(sim.tcp_address, mbap(7, 1, READ_1))
        sim.clear_faults(1)
        sim.inject_fault(1, "garbled")
        garbled = await read_some(sim.tcp_address, mbap(7, 1, READ_1))
    assert 7 < len(truncated) < len(good)
    assert truncated == good[: len(truncated)]
    assert len(garbled) == len(good)
    assert garbled[:7] == good[:7]  # the MBAP header is intact, the PDU is not
    assert garbled[7:] != good[7:]


async def test_bad_crc_truncated_and_garbled_over_rtu() -> None:
    async with Simulator.start(
        meters=1, tcp_port=None, rtu_tcp_port=0, clock=VirtualClock(), seed=1
    ) as sim:
        assert sim.rtu_tcp_address is not None
        request = rtu_frame(1, READ_1)
        good = rtu_frame(1, b"\x04\x02\x00\x01")
        got = {}
        for kind in ("bad_crc", "truncated", "garbled"):
            sim.clear_faults(1)
            sim.inject_fault(1, kind)
            got[kind] = await read_some(sim.rtu_tcp_address, request)
        sim.clear_faults(1)
        clean = await read_some(sim.rtu_tcp_address, request)
    assert clean == good
    assert got["bad_crc"][:-2] == good[:-2]
    assert crc16(got["bad_crc"][:-2]) != int.from_bytes(got["bad_crc"][-2:], "little")
    assert 0 < len(got["truncated"]) < len(good)
    assert len(got["garbled"]) == len(good)
    assert crc16(got["garbled"][:-2]) != int.from_bytes(got["garbled"][-2:], "little")


async def test_reset_drops_the_tcp_connection(modbus_tcp: TcpConnect) -> None:
    async with Simulator.start(meters=1, clock=VirtualClock(), seed=1) as sim:
        sim.inject_fault(1, "reset")
        reader, writer = await asyncio.open_connection(*sim.tcp_address)
        writer.write(mbap(1, 1, READ_1))
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(100), 2)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        sim.clear_faults(1)
        client = await modbus_tcp(sim.tcp_address)
        assert (await client.read_input_registers(0, count=1, device_id=1)).registers == [1]


async def test_a_vanished_meter_comes_back_after_its_duration(modbus_tcp: TcpConnect) -> None:
    clock = VirtualClock()
    async with Simulator.start(meters=1, clock=clock, seed=1) as sim:
        sim.inject_fault(1, "vanish", duration=120)
        client = await modbus_tcp(sim.tcp_address)

        async def present() -> bool:
            rr = await client.read_input_registers(0, count=1, device_id=1)
            if rr.isError():
                assert rr.exception_code == 0x0B  # TCP: gateway target failed to respond
                return False
            return True

        seen = []
        for step in (0, 60, 61, 60, 59, 1, 119, 1):  # t = 0 60 121 181 240 241 360 361
            clock.advance(step)
            seen.append(await present())
    # gone 0..120 s, back 120..240 s, gone again at 240 s (probability 1), back at 360 s
    assert seen == [False, False, True, True, False, False, True, True]


async def test_vanish_clear_brings_the_meter_back_at_once(modbus_tcp: TcpConnect) -> None:
    async with Simulator.start(meters=1, clock=VirtualClock(), seed=1) as sim:
        sim.inject_fault(1, "vanish", duration=3600)
        client = await modbus_tcp(sim.tcp_address)
        assert (await client.read_input_registers(0, count=1, device_id=1)).isError()
        sim.clear_faults(1)
        assert (await client.read_input_registers(0, count=1, device_id=1)).registers == [1]


async def test_stuck_relay_acknowledges_but_does_not_move(modbus_tcp: TcpConnect) -> None:
    async with Simulator.start(meters=1, clock=VirtualClock(), seed=1) as sim:
        sim.inject_fault(1, "relay_stuck")
        client = await modbus_tcp(sim.tcp_address)
        ack = await client.write_coil(0, False, device_id=1)
        assert not ack.isError()
        assert (await client.read_coils(0, count=1, device_id=1)).bits[0] is True
        sim.clear_faults(1)
        await client.write_coil(0, False, device_id=1)
        assert (await client.read_coils(0, count=1, device_id=1)).bits[0] is False


async def test_energy_register_resets_once(modbus_tcp: TcpConnect) -> None:
    clock = VirtualClock()
    async with Simulator.start(meters=1, clock=clock, seed=1) as sim:
        sim.set_load(1, 3600)
        client = await modbus_tcp(sim.tcp_address)
        before = await client.read_input_registers(1, count=4, device_id=1)
        assert before.registers != [0, 0, 0, 0]
        sim.inject_fault(1, "energy_reset")
        after = await client.read_input_registers(1, count=4, device_id=1)
        assert after.registers == [0, 0, 0, 0]
        clock.advance(10)
        later = await client.read_input_registers(1, count=4, device_id=1)
        assert later.registers == [0, 0, 0, 10]  # counting again from zero, no second reset


async def test_bus_wide_faults_hit_every_meter_and_units_override_them(
    modbus_tcp: TcpConnect,
) -> None:
    async with Simulator.start(meters=3, clock=VirtualClock(), seed=1) as sim:
        sim.inject_fault("all", "exception", code=6)
        sim.inject_fault(2, "exception", code=5)
        client = await modbus_tcp(sim.tcp_address)
        codes = [
            (await client.read_input_registers(0, count=1, device_id=u)).exception_code
            for u in (1, 2, 3)
        ]
    assert codes == [6, 5, 6]


async def test_probabilistic_faults_replay_with_the_same_seed() -> None:
    async def answered(seed: int) -> list[int]:
        async with Simulator.start(
            meters=1,
            clock=VirtualClock(),
            seed=seed,
            faults=[FaultSpec(unit=1, kind=FaultKind.EXCEPTION, probability=0.5)],
        ) as sim:
            payload = b"".join(mbap(tid, 1, READ_1) for tid in range(100))
            data = await read_some(sim.tcp_address, payload)
        refused, pos = [], 0
        while pos < len(data):
            tid, _, length = struct.unpack_from(">HHH", data, pos)
            if data[pos + 7] == 0x84:
                refused.append(tid)
            pos += 6 + length
        assert pos == len(data)
        return refused

    first, again, other = await answered(3), await answered(3), await answered(4)
    assert first == again
    assert first != other
    assert 25 < len(first) < 75


async def test_a_slow_meter_holds_the_rtu_bus() -> None:
    async with Simulator.start(
        meters=2, tcp_port=None, rtu_tcp_port=0, clock=VirtualClock(), seed=1
    ) as sim:
        bus = sim.rtu_tcp_address
        assert bus is not None
        sim.inject_fault(1, "slow", delay=0.4)

        async def exchange(unit: int, after: float) -> tuple[bytes, float]:
            await asyncio.sleep(after)
            reader, writer = await asyncio.open_connection(*bus)
            t0 = time.perf_counter()
            writer.write(rtu_frame(unit, READ_1))
            reply = await asyncio.wait_for(reader.readexactly(7), 5)
            elapsed = time.perf_counter() - t0
            writer.close()
            await writer.wait_closed()
            return reply, elapsed

        (slow, slow_s), (other, other_s) = await asyncio.gather(exchange(1, 0), exchange(2, 0.1))
    assert slow == rtu_frame(1, b"\x04\x02\x00\x01")
    assert other == rtu_frame(2, b"\x04\x02\x00\x01")
    assert slow_s >= 0.4
    assert other_s >= 0.25  # waited for the slow meter's exchange, not its own
