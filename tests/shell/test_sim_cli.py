"""`meter-sim serve` runs with flags and a fault plan, `meter-sim ctl` drives it in the documented command shapes, and bad input ends with one clear line and a non-zero exit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.shell.conftest import TcpConnect

pytestmark = pytest.mark.asyncio

SIM = [sys.executable, "-m", "meter_sim"]


async def run(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *SIM, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@asynccontextmanager
async def serving(*args: str) -> AsyncIterator[dict[str, str]]:
    """Start ``meter-sim serve``; yield what it printed (kind -> address) once ready."""
    proc = await asyncio.create_subprocess_exec(
        *SIM, "serve", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    printed: dict[str, str] = {}
    try:
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line, "meter-sim serve exited before it was ready"
            kind, _, rest = line.partition(" ")
            printed.setdefault(kind, rest.split(" ")[0].strip())
            if kind == "ready:":
                break
        yield printed
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
    assert code == 0


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def ctl(control: str, *args: str) -> object:
    code, out, err = await run("ctl", "--control", control, *args)
    assert code == 0, err
    return json.loads(out)


async def test_serve_and_control_in_the_documented_shapes(
    tmp_path: Path, modbus_tcp: TcpConnect
) -> None:
    plan = tmp_path / "faults.toml"
    plan.write_text('[[faults]]\nunit = 2\nkind = "exception"\ncode = 6\n')
    async with serving(
        "--map", "pe1", "--meters", "4", "--tcp", "127.0.0.1:0", "--control", "127.0.0.1:0",
        "--speed", "60", "--seed", "1", "--rtu-pty", "--faults", str(plan),
        "--fault", "4:exception:1:code=4",
    ) as printed:  # fmt: skip
        assert printed["rtu-pty"].startswith("/dev/")
        control = printed["control"]
        client = await modbus_tcp(address(printed["modbus-tcp"]))
        busy = await client.read_input_registers(0, count=1, device_id=2)
        assert busy.exception_code == 6  # from the fault plan

        assert await ctl(control, "keypad", "3", "12345678901234567890") == {"keypad_seq": 1}
        await ctl(control, "button", "3")
        await ctl(control, "tamper", "3", "bypass", "on")
        await ctl(control, "tamper", "3", "cover", "on")
        await ctl(control, "load", "3", "2500")
        await ctl(control, "fault", "3", "timeout", "0.5")
        await ctl(control, "fault", "2", "clear")
        state = await ctl(control, "state", "3")
        assert isinstance(state, dict)
        assert state["keypad_pending"] is True
        assert state["keypad_digits"] == "12345678901234567890"
        assert state["tampers"]["bypass"] is True
        assert state["load_override_w"] == 2500
        assert state["faults"][0]["kind"] == "timeout"
        assert state["faults"][0]["probability"] == 0.5

        failing = await client.read_input_registers(16, count=1, device_id=4)
        assert failing.exception_code == 4  # from the --fault flag
        ok = await client.read_input_registers(0, count=1, device_id=2)
        assert ok.registers == [1]  # its fault was cleared
        rr = await client.read_input_registers(12, count=2, device_id=1)
        assert not rr.isError()


async def test_ctl_rejects_bad_requests_with_one_line() -> None:
    async with serving("--meters", "2", "--tcp", "127.0.0.1:0", "--control", "127.0.0.1:0") as p:
        for args, problem in [
            (["keypad", "1", "123"], "20 decimal digits"),
            (["keypad", "9", "12345678901234567890"], "no meter 9"),
            (["tamper", "1", "sticker", "on"], "unknown tamper"),
            (["fault", "1", "meltdown", "0.5"], "kind"),
            (["fault", "1", "timeout", "1.5"], "probability"),
            (["load", "1", "lots"], "not a whole number"),
        ]:
            code, out, err = await run("ctl", "--control", p["control"], *args)
            assert code == 2, args  # a value the simulator refuses: the caller's to fix
            assert out == ""
            assert err.count("\n") == 1
            assert err.startswith("meter-sim ctl: error: ")
            assert problem in err, (args, err)


async def test_serve_refuses_bad_input_with_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    bad_plan = tmp_path / "bad.json"
    bad_plan.write_text('{"faults": [{"unit": 1, "kind": "timeout", "probability": 7}]}')
    try:
        cases = [
            (["--tcp", f"127.0.0.1:{port}"], "already in use"),
            (["--map", "nope", "--tcp", "127.0.0.1:0"], "unknown map 'nope'"),
            (["--meters", "300", "--rtu-pty", "--tcp", "127.0.0.1:0"], "at most 247"),
            (["--faults", str(bad_plan), "--tcp", "127.0.0.1:0"], "probability"),
            (["--faults", str(tmp_path / "none.toml"), "--tcp", "127.0.0.1:0"], "cannot read"),
            (["--no-tcp"], "--no-tcp leaves nothing to serve"),
            (["--no-tcp", "--baud", "9600"], "--no-tcp leaves nothing to serve"),
            (["--baud", "9600", "--tcp", "127.0.0.1:0"], "--baud emulates an RTU line"),
            (["--baud", "0", "--rtu-pty", "--tcp", "127.0.0.1:0"], "--baud must be positive"),
            (["--max-connections", "-1", "--tcp", "127.0.0.1:0"], "--max-connections must be"),
        ]
        for args, problem in cases:
            code, out, err = await run("serve", *args)
            assert code == 2, (args, err)
            assert "ready" not in out
            assert err.count("\n") == 1, err
            assert problem in err, (args, err)
            assert "Traceback" not in err
    finally:
        busy.close()


async def test_serve_takes_the_connection_limit_and_pipelining_flags(
    modbus_tcp: TcpConnect,
) -> None:
    async with serving(
        "--meters", "2", "--tcp", "127.0.0.1:0", "--max-connections", "1", "--pipelining"
    ) as printed:  # fmt: skip
        client = await modbus_tcp(address(printed["modbus-tcp"]))
        assert not (await client.read_input_registers(0, count=1, device_id=1)).isError()
        try:
            reader, writer = await asyncio.open_connection(*address(printed["modbus-tcp"]))
        except ConnectionResetError:
            pass  # reset before the connect call returned: refused all the same
        else:
            writer.write(bytes.fromhex("000100000006010400000001"))
            with contextlib.suppress(ConnectionResetError):  # reset, or at least closed
                assert await asyncio.wait_for(reader.read(100), 5) == b""
            writer.close()
            with contextlib.suppress(ConnectionResetError):
                await writer.wait_closed()
        assert not (await client.read_input_registers(0, count=1, device_id=2)).isError()


async def test_ctl_without_a_simulator_says_so() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    free = s.getsockname()[1]
    s.close()
    code, _, err = await run("ctl", "--control", f"127.0.0.1:{free}", "state", "1")
    assert code == 1
    assert err.startswith("meter-sim ctl: error: no simulator at")
