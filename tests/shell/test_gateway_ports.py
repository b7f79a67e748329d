"""The gateway's Modbus ports read the real simulator over TCP (over several connections, within the device's connection limit), RTU on a pty and RTU over TCP; a dead or slow meter never stalls, closes or pollutes the reads of its healthy neighbours."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.actuator import RelayTarget
from gateway.config import TcpBus
from gateway.meter_io import MeterIO
from gateway.modbus_port import IOFailure, MeterIOError, RtuPort, TcpPort
from gateway.modbus_port.tcp import REGROW_AFTER
from meter_sim.clock import VirtualClock
from meter_sim.server import DEFAULT_MAX_CONNECTIONS
from meter_sim.simulator import Simulator
from protocol.modbus import read_input
from protocol.regmap import load_map

pytestmark = pytest.mark.asyncio

PE1 = MeterIO(load_map("pe1"))
OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


async def test_tcp_reads_every_meter_concurrently_with_its_own_values() -> None:
    clock = VirtualClock()
    async with Simulator.start(meters=20, seed=3, clock=clock) as sim:
        clock.advance(3600)
        host, port = sim.tcp_address
        tcp = TcpPort("tcp", host, port, concurrency=8, timeout=2.0)
        try:
            snaps = await asyncio.gather(*(PE1.read(tcp, u) for u in range(1, 21)))
        finally:
            await tcp.close()
        for unit, snap in enumerate(snaps, start=1):
            assert snap.energy_import_wh == sim.state(unit)["energy_import_wh"]
            assert snap.relay_closed is True
        assert len({s.energy_import_wh for s in snaps}) > 10  # different meters, different values


async def test_tcp_timeout_fails_one_unit_and_keeps_the_connection() -> None:
    async with Simulator.start(meters=3, seed=1, clock=VirtualClock()) as sim:
        sim.inject_fault(2, "timeout")
        tcp = TcpPort("tcp", *sim.tcp_address, concurrency=4, timeout=0.3)
        try:
            results = await asyncio.gather(
                *(PE1.read(tcp, u) for u in (1, 2, 3) for _ in range(5)), return_exceptions=True
            )
            failed = [r for r in results if isinstance(r, MeterIOError)]
            assert len(failed) == 5
            assert all(f.unit == 2 and f.kind is IOFailure.TIMEOUT for f in failed)
            snap = await PE1.read(tcp, 1)
            assert tcp.connects == 1  # same connection all along
            assert snap.energy_import_wh == sim.state(1)["energy_import_wh"]
        finally:
            await tcp.close()


async def test_tcp_late_reply_is_never_taken_for_another_request() -> None:
    async with Simulator.start(meters=2, seed=1, clock=VirtualClock()) as sim:
        sim.inject_fault(1, "slow", delay=0.4)
        # The simulator, like a serial device server, answers one connection in order:
        # unit 2's reply queues behind unit 1's late one, inside unit 2's timeout.
        tcp = TcpPort("tcp", *sim.tcp_address, concurrency=1, timeout=0.3)
        try:
            with pytest.raises(MeterIOError, match="timeout"):
                await PE1.read(tcp, 1)
            # The slow reply for unit 1 arrives while we wait for unit 2.
            for _ in range(3):
                (map_version,) = await tcp.request(read_input(2, 0, 1))
                assert map_version == 1
                snap = await PE1.read(tcp, 2)
                assert snap.energy_import_wh == sim.state(2)["energy_import_wh"]
            assert tcp.stray_replies == 1
        finally:
            await tcp.close()


async def test_exception_reply_and_garbled_frames_are_typed_failures() -> None:
    async with Simulator.start(meters=2, seed=1, clock=VirtualClock()) as sim:
        tcp = TcpPort("tcp", *sim.tcp_address, timeout=0.5)
        try:
            sim.inject_fault(1, "exception", code=6)
            with pytest.raises(MeterIOError) as info:
                await PE1.read(tcp, 1)
            assert info.value.kind is IOFailure.EXCEPTION
            assert "busy" in info.value.cause
            sim.clear_faults(1)
            sim.inject_fault(1, "truncated")
            with pytest.raises(MeterIOError) as info:
                await PE1.read(tcp, 1)
            assert info.value.kind is IOFailure.GARBLED
            assert tcp.resets == 1  # a half frame leaves the stream out of step: reconnect
            sim.clear_faults(1)
            assert (await PE1.read(tcp, 2)).energy_import_wh == sim.state(2)["energy_import_wh"]
        finally:
            await tcp.close()


async def test_relay_write_and_read_back() -> None:
    async with Simulator.start(meters=1, seed=1, clock=VirtualClock()) as sim:
        tcp = TcpPort("tcp", *sim.tcp_address)
        try:
            relay = RelayTarget(tcp, 1, PE1.regmap.point("relay").address)
            await relay.write(False)
            assert await relay.read() is False
            assert sim.state(1)["relay_closed"] is False
            await PE1.write_points(tcp, 1, {"display_code": 7, "display_credit": -1250})
            assert sim.state(1)["holding_written"] == {"1": 7, "2": 0xFFFF, "3": 0xFB1E}
        finally:
            await tcp.close()


@pytest.mark.parametrize("transport", ["pty", "rtu-tcp"])
async def test_rtu_reads_and_stale_replies_are_discarded(transport: str) -> None:
    async with Simulator.start(
        meters=3,
        seed=2,
        clock=VirtualClock(),
        tcp_port=None,
        rtu_pty=transport == "pty",
        rtu_tcp_port=0 if transport == "rtu-tcp" else None,
        baud=115200,
    ) as sim:
        if transport == "pty":
            assert sim.rtu_pty_path is not None
            device = sim.rtu_pty_path
        else:
            assert sim.rtu_tcp_address is not None
            device = "socket://{}:{}".format(*sim.rtu_tcp_address)
        rtu = RtuPort("rtu", device, baud=115200, timeout=0.1, guard=0.05)
        try:
            for unit in (1, 2, 3):
                snap = await PE1.read(rtu, unit)
                assert snap.energy_import_wh == sim.state(unit)["energy_import_wh"]
            # A reply that comes after its timeout must not answer the next request.
            sim.inject_fault(1, "slow", delay=0.12)
            with pytest.raises(MeterIOError):
                await PE1.read(rtu, 1)
            sim.clear_faults(1)
            for _ in range(4):
                snap = await PE1.read(rtu, 2)
                assert snap.energy_import_wh == sim.state(2)["energy_import_wh"]
            sim.inject_fault(3, "bad_crc")
            with pytest.raises(MeterIOError) as info:
                await PE1.read(rtu, 3)
            assert info.value.kind is IOFailure.GARBLED
        finally:
            await rtu.close()


async def test_tcp_spreads_meters_over_connections_and_never_mixes_them_up() -> None:
    # A device answering one request at a time per connection (the simulator's default),
    # four connections of one in flight each, a slow meter whose replies come late: every
    # value read is its own meter's, whichever connection carried it.
    clock = VirtualClock()
    async with Simulator.start(meters=40, seed=5, clock=clock) as sim:
        clock.advance(7200)
        sim.inject_fault(7, "slow", 0.5, delay=0.4)
        (endpoint,) = sim.endpoints
        tcp = TcpPort("tcp", *sim.tcp_address, concurrency=4, connections=4, timeout=0.3)
        try:
            for _round in range(3):
                results = await asyncio.gather(
                    *(PE1.read(tcp, u) for u in range(1, 41)), return_exceptions=True
                )
                for unit, result in enumerate(results, start=1):
                    if isinstance(result, MeterIOError):
                        assert unit == 7
                        assert result.kind is IOFailure.TIMEOUT
                        continue
                    assert not isinstance(result, BaseException), result
                    state = sim.state(unit)
                    assert result.energy_import_wh == state["energy_import_wh"]
                    assert result.power_w == state["power_w"]
            assert tcp.open_connections == 4
            assert endpoint.connections == 4
            assert tcp.refusals == 0
        finally:
            await tcp.close()
        energies = {sim.state(u)["energy_import_wh"] for u in range(1, 41)}
        assert len(energies) > 30  # different meters, different values: a mix-up would show


async def test_tcp_keeps_to_the_connections_a_device_allows() -> None:
    clock = VirtualClock()
    async with Simulator.start(meters=10, seed=2, clock=clock, max_connections=2) as sim:
        clock.advance(600)
        (endpoint,) = sim.endpoints
        tcp = TcpPort("tcp", *sim.tcp_address, concurrency=4, connections=4, timeout=1.0)
        try:
            first = await asyncio.gather(
                *(PE1.read(tcp, u) for u in range(1, 11)), return_exceptions=True
            )
            refused = [r for r in first if isinstance(r, MeterIOError)]
            assert all(r.kind is IOFailure.CONNECTION for r in refused)
            assert tcp.refusals >= 1
            assert endpoint.refused == tcp.refusals
            assert tcp.open_connections == 2
            # From now on the port keeps to the two connections the device takes.
            for _round in range(3):
                snaps = await asyncio.gather(*(PE1.read(tcp, u) for u in range(1, 11)))
                for unit, snap in enumerate(snaps, start=1):
                    assert snap.energy_import_wh == sim.state(unit)["energy_import_wh"]
            assert endpoint.refused == tcp.refusals
            assert tcp.open_connections == 2
        finally:
            await tcp.close()


async def test_the_operations_page_states_how_long_a_refusal_is_heeded() -> None:
    page = await asyncio.to_thread(OPERATIONS.read_text)
    assert f"for {REGROW_AFTER / 60:g} minutes, then" in page
    assert TcpBus.model_fields["connections"].default < DEFAULT_MAX_CONNECTIONS
