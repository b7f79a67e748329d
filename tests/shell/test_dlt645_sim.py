"""`meter-sim serve --protocol dlt645` serves DL/T 645 meters on a pty and over TCP with wire time at the chosen baud (within 10% of the line's arithmetic, never under it), injects the Modbus fault kinds as a 645 master sees them, presses the button through the control port, and refuses impossible command lines with one clear line."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from gateway.dlt645_io import Dlt645MeterIO
from gateway.dlt645_port import Dlt645IOError, Dlt645Port
from gateway.modbus_port import IOFailure
from meter_sim.clock import VirtualClock
from meter_sim.control import request as control_request
from meter_sim.dlt645_server import char_time
from meter_sim.dlt645_simulator import Dlt645Simulator
from meter_sim.physics import round_div
from protocol.dlt645.frame import Address, Deframer, Frame
from protocol.dlt645.messages import ReadRequest
from protocol.dlt645.meter_map import load_dlt645_map
from protocol.dlt645.terms import ErrorWord
from tests.shell.test_sim_cli import address, run, serving

pytestmark = pytest.mark.asyncio

SINGLE = load_dlt645_map("dlt645_single_phase")
IO = Dlt645MeterIO(SINGLE)
A1, A2, A3 = (Address.of_number(n) for n in (1, 2, 3))


def _energy_wh(sim: Dlt645Simulator, n: int) -> int:
    """What the meter shows, in Wh: its register has 10 Wh steps."""
    return 10 * round_div(sim.state(n)["energy_import_wh"], 10)


async def _round_trip(where: tuple[str, int], request: bytes, tries: int) -> tuple[float, int]:
    """Best seconds from writing ``request`` to holding the whole reply, and its size."""
    reader, writer = await asyncio.open_connection(*where)
    best, size = float("inf"), 0
    try:
        for _ in range(tries):
            deframer = Deframer()
            t0 = time.perf_counter()
            writer.write(request)
            got: list[tuple[Frame, int]] = []
            while not got:
                got = deframer.feed_sized(await asyncio.wait_for(reader.read(256), 5))
            best = min(best, time.perf_counter() - t0)
            size = got[0][1]
    finally:
        writer.close()
        await writer.wait_closed()
    return best, size


@pytest.mark.parametrize("baud", [2400, 9600])
async def test_wire_time_is_the_lines_arithmetic(baud: int) -> None:
    async with Dlt645Simulator.start(meters=2, clock=VirtualClock(), baud=baud) as sim:
        assert sim.rtu_tcp_address is not None
        request = ReadRequest(A2, 0x00010000).to_bytes()  # 4 wake-up bytes + 16
        took, reply = await _round_trip(sim.rtu_tcp_address, request, tries=3)
        assert reply == 4 + 12 + 8
        ideal = (len(request) + reply) * char_time(baud) + 0.020
        assert ideal <= took <= 1.10 * ideal, (took, ideal)


@pytest.mark.parametrize("transport", ["pty", "rtu-tcp"])
async def test_our_port_reads_and_switches_on_both_transports(transport: str) -> None:
    clock = VirtualClock()
    async with Dlt645Simulator.start(
        meters=3,
        clock=clock,
        baud=None,
        rtu_pty=transport == "pty",
        rtu_tcp_port=0 if transport == "rtu-tcp" else None,
    ) as sim:
        if transport == "pty":
            assert sim.rtu_pty_path is not None
            device = sim.rtu_pty_path
        else:
            assert sim.rtu_tcp_address is not None
            device = "socket://{}:{}".format(*sim.rtu_tcp_address)
        port = Dlt645Port("bus", device, timeout=0.2, guard=0.05)
        try:
            sim.set_load(2, 3600)
            full = Dlt645MeterIO(SINGLE, ("energy_import", "active_power", "voltage", "status"))
            snap = await full.read(port, A2)
            assert snap.energy_import_wh == _energy_wh(sim, 2)
            assert snap.power_w == 3600
            assert snap.voltage_v == sim.state(2)["voltage_dv"] / 10
            assert snap.relay_closed is True
            clock.advance(60)  # 60 Wh at 3600 W
            assert (await IO.read(port, A2)).energy_import_wh == _energy_wh(sim, 2)
        finally:
            await port.close()


async def test_faults_reach_a_645_master_as_typed_failures() -> None:
    async with Dlt645Simulator.start(meters=2, clock=VirtualClock(), baud=None) as sim:
        assert sim.rtu_tcp_address is not None
        port = Dlt645Port("bus", "socket://{}:{}".format(*sim.rtu_tcp_address), timeout=0.15)
        port.guard = 0.05
        try:
            expected = {
                "timeout": IOFailure.TIMEOUT,
                "bad_crc": IOFailure.GARBLED,
                "truncated": IOFailure.GARBLED,
                "garbled": IOFailure.GARBLED,
                "vanish": IOFailure.TIMEOUT,
                "reset": IOFailure.TIMEOUT,  # a serial line has no connection to reset
            }
            for kind, failure in expected.items():
                sim.inject_fault(1, kind)
                with pytest.raises(Dlt645IOError) as info:
                    await IO.read(port, A1)
                assert info.value.kind is failure, kind
                sim.clear_faults(1)
                # the bus is clean again for the other meter at once
                assert (await IO.read(port, A2)).energy_import_wh == _energy_wh(sim, 2)
            sim.inject_fault(1, "exception", code=ErrorWord.PASSWORD)
            with pytest.raises(Dlt645IOError) as refused:
                await IO.read(port, A1)
            assert refused.value.kind is IOFailure.EXCEPTION
            assert refused.value.error == ErrorWord.PASSWORD
            sim.clear_faults(1)
            sim.inject_fault(1, "energy_reset")
            assert (await IO.read(port, A1)).energy_import_wh < 20
        finally:
            await port.close()


async def test_the_cli_serves_a_bus_and_ctl_presses_the_button() -> None:
    async with serving(
        "--protocol",
        "dlt645",
        "--meters",
        "2",
        "--rtu-tcp",
        "127.0.0.1:0",
        "--rtu-pty",
        "--baud",
        "9600",
        "--control",
        "127.0.0.1:0",
    ) as printed:
        assert printed["rtu-pty"].startswith("/dev/")
        control = address(printed["control"])
        port = Dlt645Port("bus", f"socket://{printed['rtu-tcp']}", baud=9600, timeout=0.3)
        try:
            assert (await IO.read(port, A2)).relay_closed is True
        finally:
            await port.close()
        pressed = await control_request(*control, {"cmd": "button", "unit": 2})
        assert pressed == {"ok": True, "result": {"pressed": 2}}
        keypad = await control_request(*control, {"cmd": "keypad", "unit": 2, "digits": "1" * 20})
        assert keypad["ok"] is False
        assert "no keypad" in keypad["error"]
        state = await control_request(*control, {"cmd": "state", "unit": 2})
        assert state["result"]["dlt645"]["address"] == "000000000002"
        assert "keypad_seq" not in state["result"]
        json.dumps(state)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tcp", "127.0.0.1:0"], "no TCP framing"),
        ([], "needs --rtu-pty or --rtu-tcp"),
        (["--rtu-pty", "--map", "pe1"], "unknown DL/T 645 map 'pe1'"),
        (["--rtu-pty", "--meters", "300"], "at most 247"),
        (["--rtu-pty", "--reply-delay", "2"], "reply delay"),
        (["--rtu-pty", "--baud", "-1"], "--baud"),
    ],
)
async def test_bad_dlt645_command_lines_end_with_one_line(args: list[str], message: str) -> None:
    code, out, err = await run("serve", "--protocol", "dlt645", *args)
    assert code == 2  # a usage error
    assert out == ""
    assert err.startswith("meter-sim serve: error: ")
    assert message in err
    assert err.count("\n") == 1


async def test_modbus_serve_refuses_the_645_flags() -> None:
    code, _, err = await run("serve", "--first-address", "5", "--no-tcp", "--rtu-pty")
    assert code == 2
    assert "--protocol dlt645" in err
