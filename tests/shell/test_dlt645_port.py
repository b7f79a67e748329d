"""The gateway's DL/T 645 port keeps the RTU discipline against the real simulator and hostile peers on real sockets: one request on the wire, wake-up bytes first, a reply from another address (or a late one) never charged to the request, the bus kept silent after failures, follow-up frames joined, refusals typed with their error word, broadcast time and read address as the standard has them, and a line that cannot be opened is the bus unreachable (as a Modbus one)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest

from gateway.dlt645_io import Dlt645Credentials, Dlt645MeterIO, command_deadline
from gateway.dlt645_port import Dlt645IOError, Dlt645Port
from gateway.modbus_port import BusUnreachableError, IOFailure
from meter_sim.clock import VirtualClock
from meter_sim.dlt645_simulator import Dlt645Simulator
from meter_sim.physics import round_div
from protocol.dlt645.clock import MeterTime
from protocol.dlt645.credentials import OperatorCode, Password
from protocol.dlt645.frame import Address, Deframer, Frame
from protocol.dlt645.messages import ReadReply, ReadRequest
from protocol.dlt645.meter_map import load_dlt645_map
from protocol.dlt645.terms import ControlCommand, ErrorWord

pytestmark = pytest.mark.asyncio

SINGLE = load_dlt645_map("dlt645_single_phase")
IO = Dlt645MeterIO(SINGLE)
A1, A2, A3 = (Address.of_number(n) for n in (1, 2, 3))
CREDENTIALS = Dlt645Credentials(Password.parse("02000000"), OperatorCode.parse("00000042"))
ENERGY = 0x00010000


def _device(sim: Dlt645Simulator) -> str:
    assert sim.rtu_tcp_address is not None
    return "socket://{}:{}".format(*sim.rtu_tcp_address)


def _energy_wh(sim: Dlt645Simulator, n: int) -> int:
    return 10 * round_div(sim.state(n)["energy_import_wh"], 10)


@asynccontextmanager
async def simulated(
    meters: int = 3, **kw: object
) -> AsyncIterator[tuple[Dlt645Simulator, Dlt645Port]]:
    clock = VirtualClock()
    async with Dlt645Simulator.start(meters=meters, clock=clock, baud=None, **kw) as sim:  # type: ignore[arg-type]
        # 9600 baud: a request's 20 bytes take 23 ms of the deadline (no wire time here)
        port = Dlt645Port("bus", _device(sim), baud=9600, timeout=0.15, guard=0.05)
        try:
            yield sim, port
        finally:
            await port.close()


Reply = Callable[[Frame], bytes]


@asynccontextmanager
async def peer(reply: Reply) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A hostile meter on a real socket: ``reply`` decides the bytes sent back for each
    request frame; yields the device URL and every chunk it received."""
    received: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        deframer = Deframer()
        try:
            while data := await reader.read(512):
                received.append(data)
                for frame in deframer.feed(data):
                    writer.write(reply(frame))
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    try:
        yield f"socket://{host}:{port}", received
    finally:
        server.close()
        await server.wait_closed()


def _energy_reply(address: Address, scaled: int = 1234567) -> bytes:
    payload = bytes.fromhex(f"{scaled:08d}")[::-1]  # BCD, low byte first
    return ReadReply(address, ENERGY, payload).to_bytes()


async def test_reads_every_meter_and_serialises_concurrent_callers() -> None:
    async with simulated() as (sim, port):
        meters = [A1, A2, A3] * 3
        snaps = await asyncio.gather(*(IO.read(port, a) for a in meters))
        for a, snap in zip(meters, snaps, strict=True):
            assert snap.energy_import_wh == _energy_wh(sim, a.number)
        assert sim.requests_served == 2 * len(meters)


async def test_requests_start_with_wake_up_bytes() -> None:
    async with peer(lambda f: _energy_reply(f.address)) as (device, received):
        port = Dlt645Port("bus", device, timeout=0.2)
        try:
            assert await port.read(A1, ENERGY) == bytes.fromhex("67452301")
        finally:
            await port.close()
        assert b"".join(received) == ReadRequest(A1, ENERGY).to_bytes(4)


async def test_a_reply_from_another_address_is_never_charged() -> None:
    answers = {"from": A2}

    def reply(frame: Frame) -> bytes:
        return _energy_reply(answers["from"])

    async with peer(reply) as (device, _):
        port = Dlt645Port("bus", device, timeout=0.2, guard=0.05)
        try:
            with pytest.raises(Dlt645IOError) as info:
                await port.read(A1, ENERGY)
            assert info.value.kind is IOFailure.GARBLED
            assert "meter 000000000002" in str(info.value)
            assert info.value.address == A1
            answers["from"] = A1
            assert await port.read(A1, ENERGY) == bytes.fromhex("67452301")
        finally:
            await port.close()


async def test_a_reply_for_another_identifier_or_function_is_never_charged() -> None:
    shapes = iter(
        [
            ReadReply(A1, 0x02010100, b"\x00\x23").to_bytes(),  # another identifier
            Frame(A1, 0x94).to_bytes(4),  # a write's reply
            ReadRequest(A1, ENERGY).to_bytes(),  # an echo of a request
        ]
    )
    async with peer(lambda f: next(shapes)) as (device, _):
        port = Dlt645Port("bus", device, timeout=0.2, guard=0.02)
        try:
            for _ in range(3):
                with pytest.raises(Dlt645IOError) as info:
                    await port.read(A1, ENERGY)
                assert info.value.kind is IOFailure.GARBLED
        finally:
            await port.close()


async def test_a_late_reply_never_answers_the_next_request() -> None:
    async with simulated() as (sim, port):
        port.guard = 0.2  # the deadline is 0.173 s after the write: the guard ends at 0.373
        for _ in range(3):
            sim.inject_fault(1, "slow", delay=0.27)  # after the timeout, before the guard ends
            with pytest.raises(Dlt645IOError) as info:
                await IO.read(port, A1)
            assert info.value.kind is IOFailure.TIMEOUT
            sim.clear_faults(1)
            for _ in range(3):  # dropped at the end of the guard: meter 2 reads cleanly
                snap = await IO.read(port, A2)
                assert snap.energy_import_wh == _energy_wh(sim, 2)
            # After the guard: meter 1's late reply reaches meter 2's read, which fails
            # rather than take it.
            sim.inject_fault(1, "slow", delay=0.5)
            with pytest.raises(Dlt645IOError):
                await IO.read(port, A1)
            sim.clear_faults(1)
            with pytest.raises(Dlt645IOError) as late:
                await IO.read(port, A2)
            assert late.value.kind is IOFailure.GARBLED
            assert "a reply from meter 000000000001" in late.value.cause
            snap = await IO.read(port, A2)
            assert snap.energy_import_wh == _energy_wh(sim, 2)
        assert port.stray_frames > 0  # late replies that landed in a guard, dropped


async def test_noise_before_a_reply_is_skipped_and_noise_alone_is_garbled() -> None:
    modes = iter([b"\x00\x68\x13\x37" + _energy_reply(A1), b"\x00\x01\x02\x03"])
    async with peer(lambda f: next(modes)) as (device, _):
        port = Dlt645Port("bus", device, timeout=0.15, guard=0.02)
        try:
            assert await port.read(A1, ENERGY) == bytes.fromhex("67452301")
            with pytest.raises(Dlt645IOError) as info:
                await port.read(A1, ENERGY)
            assert info.value.kind is IOFailure.GARBLED
            assert "noise" in info.value.cause
        finally:
            await port.close()


async def test_a_frame_cut_short_is_truncated_not_a_timeout() -> None:
    async with peer(lambda f: _energy_reply(f.address)[:-5]) as (device, _):
        port = Dlt645Port("bus", device, timeout=0.1, guard=0.02)
        try:
            with pytest.raises(Dlt645IOError) as info:
                await port.read(A1, ENERGY)
            assert info.value.kind is IOFailure.GARBLED
            assert "truncated" in info.value.cause
        finally:
            await port.close()


async def test_a_lost_connection_fails_the_request_and_the_next_one_reconnects() -> None:
    calls = {"n": 0}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        calls["n"] += 1
        data = await reader.read(512)
        if calls["n"] > 1:
            (frame,) = Deframer().feed(data)
            writer.write(_energy_reply(frame.address))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    host, number = server.sockets[0].getsockname()[:2]
    port = Dlt645Port("bus", f"socket://{host}:{number}", timeout=0.5, guard=0.02)
    try:
        with pytest.raises(Dlt645IOError) as info:
            await port.read(A1, ENERGY)
        assert info.value.kind is IOFailure.CONNECTION
        assert await port.read(A1, ENERGY) == bytes.fromhex("67452301")
    finally:
        await port.close()
        server.close()
        await server.wait_closed()


async def test_follow_up_frames_are_joined() -> None:
    async with simulated(max_data=8) as (sim, port):
        number = await port.read(A2, 0x04000402)  # 6 bytes in frames of at most 8
        assert number == bytes.fromhex("020000000000")
        assert sim.requests_served == 1 + 1  # B1H with 4 of them, then 92H with 2


async def test_remote_control_and_relay_read_back() -> None:
    async with simulated() as (sim, port):
        now = datetime.fromtimestamp(sim.clock.now(), UTC)
        until = command_deadline(now)
        await IO.control(port, A1, CREDENTIALS, ControlCommand.TRIP, until)
        assert await IO.read_relay(port, A1) is False
        snap = await IO.read(port, A1)
        assert snap.flags >= {"relay_open", "relay_command_open"}
        await IO.control(port, A1, CREDENTIALS, ControlCommand.ALLOW_CLOSE, until)
        assert await IO.read_relay(port, A1) is False  # waits for the customer
        sim.press_button(1)
        assert await IO.read_relay(port, A1) is True
        await IO.control(port, A1, CREDENTIALS, ControlCommand.PROTECT, until)
        with pytest.raises(Dlt645IOError) as refused:
            await IO.control(port, A1, CREDENTIALS, ControlCommand.TRIP, until)
        assert refused.value.kind is IOFailure.EXCEPTION
        assert refused.value.error == ErrorWord.OTHER
        assert await IO.read_relay(port, A1) is True
        assert "protected" in (await IO.read(port, A1)).flags
        await IO.control(port, A1, CREDENTIALS, ControlCommand.ALARM, until)
        assert "alarm" in (await IO.read(port, A1)).flags
        wrong = Dlt645Credentials(Password.parse("02123456"), CREDENTIALS.operator)
        with pytest.raises(Dlt645IOError) as denied:
            await IO.control(port, A2, wrong, ControlCommand.TRIP, until)
        assert denied.value.error == ErrorWord.PASSWORD
        assert sim.state(2)["relay_closed"] is True
        assert "123456" not in repr(wrong)


async def test_a_stuck_relay_shows_in_the_read_back() -> None:
    async with simulated() as (sim, port):
        sim.inject_fault(3, "relay_stuck")
        until = command_deadline(datetime.fromtimestamp(sim.clock.now(), UTC))
        await IO.control(port, A3, CREDENTIALS, ControlCommand.TRIP, until)
        snap = await IO.read(port, A3)
        assert snap.relay_closed is True
        assert "relay_command_open" in snap.flags


async def test_a_command_the_model_lacks_is_refused_before_the_wire() -> None:
    three = load_dlt645_map("dlt645_three_phase")
    io = Dlt645MeterIO(three)
    lacking = type(three)(
        three.name, three.title, three.version, three.document, frozenset(), three.points
    )
    async with simulated() as (sim, port):
        until = command_deadline(datetime.fromtimestamp(sim.clock.now(), UTC))
        with pytest.raises(ValueError, match="lacks capability relay"):
            await Dlt645MeterIO(lacking).control(port, A1, CREDENTIALS, ControlCommand.TRIP, until)
        assert sim.requests_served == 0
        assert (await io.read(port, A1)).relay_closed is True


async def test_broadcast_time_sets_every_clock() -> None:
    async with simulated() as (_, port):
        when = MeterTime(2026, 7, 1, 9, 30, 0)
        await port.broadcast_time(when)  # no reply: the reads behind it show it was taken
        for a in (A1, A2, A3):
            assert await IO.read_clock(port, a) == when


async def test_read_address_on_a_point_to_point_link_and_collisions_on_a_bus() -> None:
    async with simulated(meters=1, first_address=201512340001) as (_, port):
        assert await port.read_address() == Address.parse("201512340001")
    async with simulated(meters=3) as (_, port):
        with pytest.raises(Dlt645IOError) as info:
            await port.read_address()
        assert info.value.kind is IOFailure.GARBLED


async def test_a_line_that_cannot_be_opened_is_the_bus_unreachable() -> None:
    host, number = "127.0.0.1", _closed_port()
    port = Dlt645Port("bus", f"socket://{host}:{number}", timeout=0.2, guard=0.02)
    try:
        with pytest.raises(BusUnreachableError) as info:
            await port.read(A1, ENERGY)
        assert info.value.kind is IOFailure.CONNECTION
        assert info.value.reason.startswith(f"cannot open socket://{host}:{number}: ")
    finally:
        await port.close()


def _closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
