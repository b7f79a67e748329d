"""Interoperability with a DL/T 645 implementation we did not write, the `dlt645` package (3.2): its client reads and switches our simulated meters, and our port and meter I/O read, trip and close its server as a foreign meter, over TCP and over ptys.

Two of its habits shape these tests, and both are its own, not the standard's: it writes
an address string in wire order (``set_address("010000000000")`` is our meter
000000000001, since the standard sends the address low byte first), and it sends
broadcast time year first (the standard sends multi-byte data low byte first: seconds
first). Its server does not know remote control (1CH) and refuses it; a test below adds
1CH to it in a few lines, on its own framing and data, to switch a foreign meter. A pty
carries bytes, not parity bits, and this machine's pty driver refuses to be reconfigured
with even parity, which pyserial-asyncio does; its serial ends therefore open with
parity N.
"""

from __future__ import annotations

import asyncio
import os
import termios
import tty
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
from dlt645.protocol.protocol import DLT645Protocol
from dlt645.service.clientsvc.async_client_service import AsyncMeterClientService
from dlt645.service.serversvc.async_server_service import AsyncMeterServerService

from gateway.dlt645_io import Dlt645Credentials, Dlt645MeterIO
from gateway.dlt645_port import Dlt645IOError, Dlt645Port
from gateway.modbus_port import IOFailure
from meter_sim.clock import VirtualClock
from meter_sim.dlt645_simulator import Dlt645Simulator
from meter_sim.physics import round_div
from protocol.dlt645.clock import MeterTime
from protocol.dlt645.credentials import OperatorCode, Password
from protocol.dlt645.frame import Address
from protocol.dlt645.meter_map import load_dlt645_map
from protocol.dlt645.terms import ControlCommand, ErrorWord

pytestmark = pytest.mark.asyncio

SINGLE = load_dlt645_map("dlt645_single_phase")
IO = Dlt645MeterIO(SINGLE, ("energy_import", "active_power", "voltage", "status"))
FOREIGN = Address.parse("201512340001")
CREDENTIALS = Dlt645Credentials(Password.parse("02000000"), OperatorCode.parse("00000007"))
UNTIL = MeterTime(2099, 12, 31, 23, 59, 59)
STATUS = 0x04000503


def _wire(address: Address) -> str:
    """The package's spelling of an address: its bytes in wire order."""
    return address.raw.hex()


# ----------------------------------------------------------- its client, our simulator


@asynccontextmanager
async def their_client(**where: Any) -> AsyncIterator[AsyncMeterClientService]:
    if "path" in where:
        client = AsyncMeterClientService.new_rtu_client(
            where["path"], baudrate=2400, parity="N", timeout=2.0
        )
    else:
        client = AsyncMeterClientService.new_tcp_client(*where["tcp"], timeout=2.0)
    assert await client.connect()
    try:
        yield client
    finally:
        await client.disconnect()


async def _their_reads(client: AsyncMeterClientService, sim: Dlt645Simulator, n: int) -> None:
    client.set_address(_wire(sim.address_of(n)))
    state = sim.state(n)
    energy = await client.read_00(0x00010000)
    assert energy is not None
    assert round(energy.value * 100) == round_div(state["energy_import_wh"], 10)
    voltage = await client.read_02(0x02010100)
    assert voltage is not None
    assert round(voltage.value * 10) == state["voltage_dv"]
    power = await client.read_02(0x02030000)
    assert power is not None
    assert round(power.value * 10_000) == state["power_w"] * 10
    frequency = await client.read_02(0x02800002)
    assert frequency is not None
    assert round(frequency.value * 100) == state["frequency_chz"]


async def test_their_client_reads_our_meters_over_tcp() -> None:
    async with Dlt645Simulator.start(meters=3, clock=VirtualClock(), baud=None, seed=4) as sim:
        sim.set_load(2, 1800)
        async with their_client(tcp=sim.rtu_tcp_address) as client:
            for n in (1, 2, 3):
                await _their_reads(client, sim, n)
            status = await client.read_04(STATUS)
            assert status is not None
            assert status.value == "0000"  # relay closed, nothing commanded


async def test_their_client_reads_our_meters_over_a_pty() -> None:
    async with Dlt645Simulator.start(
        meters=2, clock=VirtualClock(), baud=None, rtu_pty=True, rtu_tcp_port=None
    ) as sim:
        assert sim.rtu_pty_path is not None
        async with their_client(path=sim.rtu_pty_path) as client:
            await _their_reads(client, sim, 2)


async def test_their_framing_switches_our_meter() -> None:
    """Their client has no remote control: their encoder and transport carry a 1CH frame
    laid out by hand from the standard, and their decoder reads our reply."""
    async with (
        Dlt645Simulator.start(meters=2, clock=VirtualClock(), baud=None) as sim,
        their_client(tcp=sim.rtu_tcp_address) as client,
    ):
        # PA P0 P1 P2 | C0..C3 | N1 = 1AH trip, N2 = 00 | valid until ss mm hh DD MM YY
        data = bytes.fromhex("02000000 07000000 1A00 595923311299".replace(" ", ""))
        frame = DLT645Protocol.build_frame(sim.address_of(2).raw, 0x1C, data)
        reply = DLT645Protocol.deserialize(await client.client.send_request(frame))
        assert reply.ctrl_code == 0x9C
        assert sim.state(2)["relay_closed"] is False
        client.set_address(_wire(sim.address_of(2)))
        status = await client.read_04(STATUS)
        assert status is not None
        assert status.value == "0050"  # bits 4 (relay open) and 6 (commanded open)
        wrong = DLT645Protocol.build_frame(
            sim.address_of(1).raw, 0x1C, bytes.fromhex("02999999") + data[4:]
        )
        refused = DLT645Protocol.deserialize(await client.client.send_request(wrong))
        assert refused.ctrl_code == 0xDC
        assert refused.data[0] == ErrorWord.PASSWORD
        assert sim.state(1)["relay_closed"] is True


async def test_their_client_reads_the_address_of_a_lone_meter() -> None:
    async with (
        Dlt645Simulator.start(
            meters=1, clock=VirtualClock(), baud=None, first_address=201512340001
        ) as sim,
        their_client(tcp=sim.rtu_tcp_address) as client,
    ):
        found = await client.read_address()
        assert found is not None
        assert found.value == _wire(FOREIGN)  # their spelling: wire order


async def test_their_broadcast_time_is_year_first() -> None:
    """Pinned so that a fix on their side shows: they send YY MM DD hh mm ss; the standard
    (and we) read ss mm hh DD MM YY, so their 2026-03-04 05:06:07 sets 2007-06-05 04:03:26."""
    from datetime import datetime  # noqa: PLC0415 - their API takes a naive datetime

    async with Dlt645Simulator.start(meters=1, clock=VirtualClock(), baud=None) as sim:
        async with their_client(tcp=sim.rtu_tcp_address) as client:
            assert await client.broadcast_time_sync(datetime(2026, 3, 4, 5, 6, 7))  # noqa: DTZ001
            # No reply to a broadcast: a read behind it on the same line shows it was taken.
            client.set_address(_wire(sim.address_of(1)))
            assert await client.read_00(0x00010000) is not None
        meter = sim.dlt645_meter(1)
        assert meter.wall_time(sim.clock.now()) == MeterTime(2007, 6, 5, 4, 3, 26)


# ----------------------------------------------------------- our port, their server


class RemoteControlledServer(AsyncMeterServerService):  # type: ignore[misc]
    """Their meter server with 1CH added on their own parts: their password check, their
    data map (status word 3), their frame builder. Ours are not used."""

    def handle_request(self, frame: Any) -> Any:
        if frame.ctrl_code != 0x1C or bytes(frame.addr) != bytes(self.address):
            return super().handle_request(frame)
        data = bytes(frame.data)
        if not self.password_manager.check_password(bytearray(data[0:4])):
            return self._build_error_response(frame, error_code=0x04)
        word = {0x1A: "0050", 0x1C: "0000"}.get(data[8])
        if word is None:
            return self._build_error_response(frame, error_code=0x01)
        self.set_04(STATUS, word)
        return DLT645Protocol.build_frame(frame.addr, 0x9C, b"")


@asynccontextmanager
async def their_server(
    kind: type[AsyncMeterServerService] = AsyncMeterServerService, **where: Any
) -> AsyncIterator[AsyncMeterServerService]:
    if "path" in where:
        server = kind.new_rtu_server(where["path"], baud_rate=2400, parity="N", timeout=5.0)
    else:
        server = kind.new_tcp_server("127.0.0.1", 0)
    server.set_address(_wire(FOREIGN))
    server.set_password("02000000")
    assert server.set_00(0x00010000, 1234.56)
    assert server.set_02(0x02030000, -1.5)  # kW, exporting
    assert server.set_02(0x02010100, 229.9)
    assert server.set_04(STATUS, "0000")
    assert await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def _read_trip_close(port: Dlt645Port) -> None:
    snap = await IO.read(port, FOREIGN)
    assert snap.energy_import_wh == 1_234_560
    assert snap.power_w == -1500
    assert snap.voltage_v == 229.9
    assert snap.relay_closed is True
    await IO.control(port, FOREIGN, CREDENTIALS, ControlCommand.TRIP, UNTIL)
    assert await IO.read_relay(port, FOREIGN) is False
    assert "relay_command_open" in (await IO.read(port, FOREIGN)).flags
    await IO.control(port, FOREIGN, CREDENTIALS, ControlCommand.CLOSE, UNTIL)
    assert await IO.read_relay(port, FOREIGN) is True


async def test_we_read_trip_and_close_their_meter_over_tcp() -> None:
    async with their_server(RemoteControlledServer) as server:
        port = Dlt645Port("foreign", f"socket://127.0.0.1:{server.server.port}", timeout=1.0)
        try:
            await _read_trip_close(port)
            wrong = Dlt645Credentials(Password.parse("02111111"), CREDENTIALS.operator)
            with pytest.raises(Dlt645IOError) as denied:
                await IO.control(port, FOREIGN, wrong, ControlCommand.TRIP, UNTIL)
            assert denied.value.error == ErrorWord.PASSWORD
        finally:
            await port.close()


async def test_their_unmodified_meter_refuses_remote_control_with_a_typed_error() -> None:
    async with their_server() as server:
        port = Dlt645Port("foreign", f"socket://127.0.0.1:{server.server.port}", timeout=1.0)
        try:
            with pytest.raises(Dlt645IOError) as refused:
                await IO.control(port, FOREIGN, CREDENTIALS, ControlCommand.TRIP, UNTIL)
            assert refused.value.kind is IOFailure.EXCEPTION
            assert refused.value.error == ErrorWord.OTHER
            assert await IO.read_relay(port, FOREIGN) is True  # the bus is fine after it
            with pytest.raises(Dlt645IOError) as unknown:
                await port.read(FOREIGN, 0x0001FF00)
            assert unknown.value.error == ErrorWord.NO_DATA
        finally:
            await port.close()


@contextmanager
def _pty_fds() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    tty.setraw(master, termios.TCSANOW)
    tty.setraw(slave, termios.TCSANOW)
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


@asynccontextmanager
async def pty_link() -> AsyncIterator[tuple[str, str]]:
    """Two pty devices wired to each other (a null-modem cable between two processes'
    serial ports): bytes written on one are read on the other."""
    loop = asyncio.get_running_loop()
    with _pty_fds() as (m1, p1), _pty_fds() as (m2, p2):

        def relay(src: int, dst: int) -> None:
            try:
                data = os.read(src, 4096)
            except OSError:
                return
            os.write(dst, data)

        loop.add_reader(m1, relay, m1, m2)
        loop.add_reader(m2, relay, m2, m1)
        try:
            yield p1, p2
        finally:
            loop.remove_reader(m1)
            loop.remove_reader(m2)


async def test_we_read_trip_and_close_their_meter_over_a_pty() -> None:
    async with pty_link() as (theirs, ours), their_server(RemoteControlledServer, path=theirs):
        port = Dlt645Port("foreign", ours, baud=2400, timeout=1.0)
        try:
            await _read_trip_close(port)
        finally:
            await port.close()
