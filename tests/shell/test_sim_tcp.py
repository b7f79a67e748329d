"""An independent Modbus TCP client (pymodbus) sees every shipped map with consistent values, and PE-1's full behaviour: energy, relay, bypass, keypad, load limit, button, display, exceptions, pipelining, seeds."""

from __future__ import annotations

import asyncio
import struct
from decimal import Decimal

import pytest
from pymodbus.client import AsyncModbusTcpClient

from meter_sim.clock import VirtualClock
from meter_sim.simulator import Simulator
from protocol.codec import Value, physical
from protocol.read_plan import plan_reads
from protocol.regmap import Table, load_map, shipped_map_names
from tests.shell.conftest import TcpConnect
from tests.support.register_images import decode_block

pytestmark = pytest.mark.asyncio

SI = {"kWh": Decimal(1000), "kW": Decimal(1000)}  # to Wh and W


async def read_points(client: AsyncModbusTcpClient, map_name: str, unit: int) -> dict[str, Decimal]:
    """Every numeric point of a map, read as the gateway would, in Wh, V, A, W, Hz."""
    regmap = load_map(map_name)
    names = [p.name for p in regmap.points if not p.table.is_bit_table]
    out: dict[str, Decimal] = {}
    for block in plan_reads(regmap, names):
        fn = {
            Table.INPUT: client.read_input_registers,
            Table.HOLDING: client.read_holding_registers,
        }[block.table]
        rr = await fn(block.start, count=block.count, device_id=unit)
        assert not rr.isError(), rr
        for name, value in decode_block(regmap, block.table, block.start, rr.registers).items():
            point = regmap.point(name)
            if isinstance(value, int | float) and not isinstance(value, bool) and not point.bits:
                out[name] = physical(point, value) * SI.get(point.unit, Decimal(1))
    return out


async def raw_exchange(address: tuple[str, int], payload: bytes, replies: int) -> list[bytes]:
    """Send raw MBAP bytes and read ``replies`` whole MBAP replies back."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(payload)
        out = []
        for _ in range(replies):
            head = await asyncio.wait_for(reader.readexactly(7), 5)
            (length,) = struct.unpack(">H", head[4:6])
            out.append(head + await asyncio.wait_for(reader.readexactly(length - 1), 5))
        return out
    finally:
        writer.close()
        await writer.wait_closed()


def mbap(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


@pytest.mark.parametrize("map_name", shipped_map_names())
async def test_every_shipped_map_reads_consistent_values(
    map_name: str, modbus_tcp: TcpConnect
) -> None:
    clock = VirtualClock(1_767_268_800.0)  # a Thursday, noon UTC
    async with Simulator.start(meters=3, map_name=map_name, clock=clock, seed=4) as sim:
        sim.set_load(2, 2300)
        client = await modbus_tcp(sim.tcp_address)
        values = await read_points(client, map_name, 2)
        truth = sim.state(2)
    energy = load_map(map_name).point("energy_import")
    resolution = max(Decimal(1), energy.scale * SI.get(energy.unit, Decimal(1)))
    assert abs(values["energy_import"] - truth["energy_import_wh"]) <= resolution / 2
    assert Decimal(200) < values["voltage"] < Decimal(260)
    assert values["voltage"] == pytest.approx(Decimal(truth["voltage_dv"]) / 10, abs=1)
    assert values["active_power"] == pytest.approx(2300, abs=1)
    if "frequency" in values:
        assert Decimal("49.5") < values["frequency"] < Decimal("50.5")
    pf = values.get("power_factor", Decimal(truth["power_factor_milli"]) / 1000)
    phases = 3 if "current_l2" in values else 1
    apparent = phases * values["voltage"] * values["current"] * pf
    assert apparent == pytest.approx(values["active_power"], rel=Decimal("0.02"))
    if phases == 3:
        per_phase = sum(values[f"active_power_l{k}"] for k in (1, 2, 3))
        assert per_phase == pytest.approx(values["active_power"], abs=1)


async def test_energy_rises_when_closed_stops_when_open_and_goes_on_under_bypass(
    modbus_tcp: TcpConnect,
) -> None:
    clock = VirtualClock()
    async with Simulator.start(meters=2, clock=clock, seed=1) as sim:
        sim.set_load(1, 3600)  # 3600 W: exactly 1 Wh per second
        client = await modbus_tcp(sim.tcp_address)

        async def energy_and_status() -> tuple[int, int, int]:
            rr = await client.read_input_registers(0, count=17, device_id=1)
            v = decode_block(sim.regmap, Table.INPUT, 0, rr.registers)
            return int(v["energy_import"]), int(v["active_power"]), int(v["status"])

        e0, p0, s0 = await energy_and_status()
        assert p0 == 3600
        assert s0 & 1
        clock.advance(60)
        e1, _, _ = await energy_and_status()
        assert e1 - e0 == 60

        assert not (await client.write_coil(0, False, device_id=1)).isError()
        rc = await client.read_coils(0, count=1, device_id=1)
        assert rc.bits[0] is False
        clock.advance(600)
        e2, p2, s2 = await energy_and_status()
        assert (e2, p2, s2 & 1) == (e1, 0, 0)

        sim.set_tamper(1, "bypass", True)
        clock.advance(60)
        e3, p3, s3 = await energy_and_status()
        assert e3 - e2 == 60
        assert p3 == 3600
        assert not s3 & 1

        sim.set_tamper(1, "bypass", False)
        assert not (await client.write_coil(0, True, device_id=1)).isError()
        clock.advance(30)
        e4, _, s4 = await energy_and_status()
        assert e4 - e3 == 30
        assert s4 & 1


async def test_keypad_entry_pending_sequence_and_acknowledgement(modbus_tcp: TcpConnect) -> None:
    clock = VirtualClock()
    async with Simulator.start(meters=3, clock=clock, seed=2) as sim:
        client = await modbus_tcp(sim.tcp_address)

        async def keypad() -> dict[str, Value]:
            rr = await client.read_input_registers(16, count=7, device_id=3)
            return decode_block(sim.regmap, Table.INPUT, 16, rr.registers)

        before = await keypad()
        assert before["keypad_seq"] == 0
        assert not int(str(before["status"])) & 8
        assert sim.keypad(3, "12345678901234567890") == 1
        after = await keypad()
        assert after["keypad_seq"] == 1
        assert after["keypad_digits"] == "12345678901234567890"
        assert int(str(after["status"])) & 8  # pending

        await client.write_register(0, 7, device_id=3)  # an ack for another entry
        assert int(str((await keypad())["status"])) & 8
        await client.write_register(0, 1, device_id=3)
        done = await keypad()
        assert not int(str(done["status"])) & 8
        rr = await client.read_holding_registers(0, count=1, device_id=3)
        assert rr.registers == [1]

        sim.keypad(3, "00000000000000000042")
        again = await keypad()
        assert again["keypad_seq"] == 2
        assert int(str(again["status"])) & 8


async def test_load_limit_trips_after_ten_seconds_and_a_relay_close_clears_it(
    modbus_tcp: TcpConnect,
) -> None:
    clock = VirtualClock()
    async with Simulator.start(meters=1, clock=clock, seed=3) as sim:
        client = await modbus_tcp(sim.tcp_address)
        sim.set_load(1, 2000)
        await client.write_register(4, 1500, device_id=1)

        async def status() -> int:
            rr = await client.read_input_registers(16, count=1, device_id=1)
            return int(rr.registers[0])

        clock.advance(9.9)
        assert await status() & 0b100001 == 0b000001
        clock.advance(0.2)
        assert await status() & 0b100001 == 0b100000  # open, load limit tripped
        rc = await client.read_coils(0, count=1, device_id=1)
        assert rc.bits[0] is False
        sim.set_load(1, 1000)
        await client.write_coil(0, True, device_id=1)
        assert await status() & 0b100001 == 0b000001


async def test_button_latches_until_the_status_is_read(modbus_tcp: TcpConnect) -> None:
    async with Simulator.start(meters=1, clock=VirtualClock(), seed=3) as sim:
        client = await modbus_tcp(sim.tcp_address)
        sim.press_button(1)
        first = await client.read_input_registers(16, count=1, device_id=1)
        second = await client.read_input_registers(16, count=1, device_id=1)
        assert first.registers[0] & 0x10
        assert not second.registers[0] & 0x10


async def test_display_and_alarm_registers_hold_what_the_gateway_writes(
    modbus_tcp: TcpConnect,
) -> None:
    async with Simulator.start(meters=1, clock=VirtualClock(), seed=3) as sim:
        client = await modbus_tcp(sim.tcp_address)
        await client.write_registers(1, [7, 0xFFFF, 0xFF38, 500, 1], device_id=1)
        rr = await client.read_holding_registers(0, count=6, device_id=1)
        values = decode_block(sim.regmap, Table.HOLDING, 0, rr.registers)
        assert values == {
            "keypad_ack": 0,
            "display_code": 7,
            "display_credit": -200,
            "load_limit": 500,
            "alarm": 1,
        }
        assert sim.state(1)["load_limit_w"] == 500


async def test_refused_requests_get_the_standard_exception_codes() -> None:
    async with Simulator.start(meters=2, clock=VirtualClock(), seed=3) as sim:
        cases = [
            (1, b"\x07", 0x87, 0x01),  # function 7 is not served: illegal function
            (1, struct.pack(">BHH", 4, 30, 5), 0x84, 0x02),  # past the input span
            (1, struct.pack(">BHH", 4, 0, 0), 0x84, 0x03),  # count 0
            (1, struct.pack(">BHH", 4, 0, 126), 0x84, 0x03),  # count above 125
            (1, struct.pack(">BHH", 2, 0, 1), 0x82, 0x02),  # PE-1 has no discrete inputs
            (1, struct.pack(">BHH", 6, 8, 1), 0x86, 0x02),  # no holding register 8
            (1, struct.pack(">BHH", 5, 0, 0x1234), 0x85, 0x03),  # coil value not 0/FF00
            (1, struct.pack(">BHH", 5, 1, 0xFF00), 0x85, 0x02),  # no coil 1
            (1, struct.pack(">BHHBH", 16, 0, 2, 2, 1), 0x90, 0x03),  # byte count mismatch
            (9, struct.pack(">BHH", 4, 0, 1), 0x84, 0x0B),  # no meter 9: target failed
        ]
        payload = b"".join(mbap(i, unit, pdu) for i, (unit, pdu, _, _) in enumerate(cases))
        replies = await raw_exchange(sim.tcp_address, payload, len(cases))
    for i, (reply, (unit, _, fn, code)) in enumerate(zip(replies, cases, strict=True)):
        assert reply == mbap(i, unit, bytes((fn, code))), i


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with Simulator.start(meters=5, clock=VirtualClock(), seed=3) as sim:
        payload = b"".join(
            mbap(tid, 1 + tid % 5, struct.pack(">BHH", 4, 0, 1 + tid % 31)) for tid in range(200)
        )
        replies = await raw_exchange(sim.tcp_address, payload, 200)
    for tid, reply in enumerate(replies):
        assert struct.unpack(">HHHBBB", reply[:9]) == (
            tid,
            0,
            3 + 2 * (1 + tid % 31),
            1 + tid % 5,
            4,
            2 * (1 + tid % 31),
        )


async def test_same_seed_gives_same_readings_whoever_polls_when() -> None:
    async def run(seed: int, poll_every: float) -> list[list[int]]:
        clock = VirtualClock()
        seen = []
        async with Simulator.start(meters=4, clock=clock, seed=seed) as sim:
            reader, writer = await asyncio.open_connection(*sim.tcp_address)
            elapsed = 0.0
            while elapsed < 7200:
                step = min(poll_every, 7200 - elapsed)
                clock.advance(step)
                elapsed += step
                if elapsed % 600 == 0:
                    regs = []
                    for unit in range(1, 5):
                        writer.write(mbap(unit, unit, struct.pack(">BHH", 4, 0, 17)))
                        head = await reader.readexactly(9)
                        regs += list(struct.unpack(">17H", await reader.readexactly(head[8])))
                    seen.append(regs)
                else:
                    writer.write(mbap(0, 2, struct.pack(">BHH", 4, 1, 4)))
                    await reader.readexactly(9 + 8)
            writer.close()
            await writer.wait_closed()
        return seen

    a = await run(11, 600.0)
    b = await run(11, 37.5)
    c = await run(12, 600.0)
    assert a == b
    assert a != c


async def test_more_than_247_meters_take_consecutive_ports(modbus_tcp: TcpConnect) -> None:
    async with Simulator.start(meters=300, clock=VirtualClock(), seed=3) as sim:
        assert len(sim.tcp_addresses) == 2
        address, unit = sim.tcp_endpoint_of(300)
        assert (address, unit) == (sim.tcp_addresses[1], 53)
        client = await modbus_tcp(address)
        rr = await client.read_input_registers(23, count=8, device_id=unit)
        serial = decode_block(sim.regmap, Table.INPUT, 23, rr.registers)["serial_number"]
        assert serial == sim.layout.serial_number(300)
        missing = await client.read_input_registers(0, count=1, device_id=54)
        assert missing.isError()
        assert missing.exception_code == 0x0B


async def test_unit_zero_broadcasts_writes_without_a_reply() -> None:
    async with Simulator.start(meters=3, clock=VirtualClock(), seed=3) as sim:
        payload = mbap(1, 0, struct.pack(">BHH", 6, 1, 9)) + mbap(
            2, 2, struct.pack(">BHH", 3, 1, 1)
        )
        (reply,) = await raw_exchange(sim.tcp_address, payload, 1)
        assert reply == mbap(2, 2, bytes((3, 2, 0, 9)))  # the broadcast itself got no reply
        assert all(sim.state(n)["holding_written"] == {"1": 9} for n in (1, 2, 3))
