"""The simulator page (Modbus and DL/T 645 meters) runs as written: its commands are taken from the Markdown in order and executed by a shell with the installed console scripts, the example ports swapped for free ones. (The field guide is walked by test_docs_walkthrough.py; the other pages' commands are parsed by the real CLIs in tests/unit/test_docs_commands.py.)"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.dlt645_io import Dlt645MeterIO
from gateway.dlt645_port import Dlt645Port
from protocol.dlt645.frame import Address
from protocol.dlt645.meter_map import load_dlt645_map
from tests.unit.test_docs_commands import _commands, _expand

pytestmark = pytest.mark.asyncio

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.DOTALL)


def _blocks(doc: str) -> list[tuple[str, str]]:
    return FENCE.findall((ROOT / "docs" / doc).read_text())


def _shell_commands(doc: str) -> list[tuple[list[str], str]]:
    """Each console/sh command of a page, in order, with the output lines the page shows
    after it (console blocks: lines after the ``$ `` command and its continuations)."""
    out: list[tuple[list[str], str]] = []
    for lang, body in _blocks(doc):
        if lang not in ("sh", "console", "bash"):
            continue
        shown: list[list[str]] = []
        continued = False
        for line in body.splitlines():
            if line.startswith("$ "):
                shown.append([])
            elif not continued and shown and line.strip():
                shown[-1].append(line)
            continued = line.rstrip().endswith("\\")
        commands = list(_expand(_commands(body)))
        if not shown:
            shown = [[] for _ in commands]
        assert len(shown) == len(commands), (doc, commands)
        out += list(zip(shown, commands, strict=True))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Ran:
    rc: int
    out: str
    err: str


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    return env


async def _spawn(command: str, cwd: Path) -> asyncio.subprocess.Process:
    """``command`` as a shell line, with the installed console scripts on PATH."""
    return await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        command,
        cwd=cwd,
        env=_env(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def sh(command: str, cwd: Path, stdin: bytes = b"") -> Ran:
    proc = await _spawn(command, cwd)
    out, err = await asyncio.wait_for(proc.communicate(stdin), 120)
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


@asynccontextmanager
async def served(command: str, cwd: Path) -> AsyncIterator[dict[str, str]]:
    """A documented ``meter-sim serve`` line running; what it printed (kind -> address)."""
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        f"exec {command}",
        cwd=cwd,
        env=_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    printed: dict[str, str] = {}
    try:
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            if not line:
                err = (await proc.stderr.read()).decode()
                raise AssertionError(f"{command} exited before ready: {err}")
            kind, _, rest = line.partition(" ")
            printed.setdefault(kind, rest.split(" ")[0].strip())
            if kind == "ready:":
                break
        yield printed
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
    assert code == 0, command


# ---------------------------------------------------------------------- docs/simulator.md


async def test_the_simulator_page_runs_as_written(tmp_path: Path) -> None:
    tcp, control = _free_port(), _free_port()
    bus, bus_control = _free_port(), _free_port()

    def local(cmd: str) -> str:
        for example, port in ((5020, tcp), (5021, control), (5022, bus), (5023, bus_control)):
            cmd = cmd.replace(f"127.0.0.1:{example}", f"127.0.0.1:{port}")
        return cmd

    commands = [local(c) for _, c in _shell_commands("simulator.md")]
    serves = [c for c in commands if c.startswith("meter-sim serve")]
    controls = [c for c in commands if c.startswith("meter-sim ctl")]
    assert len(serves) == 3, commands
    assert len(controls) >= 10, commands
    ran = 0
    async with served(serves[0], tmp_path) as printed:
        assert printed["modbus-tcp"] == f"127.0.0.1:{tcp}"
        assert printed["control"] == f"127.0.0.1:{control}"
        for cmd in controls:
            result = await sh(cmd, tmp_path)
            assert result.rc == 0, (cmd, result)
            if " state 3" in cmd:
                state = json.loads(result.out)
                assert state["keypad_pending"] is True  # the documented keypad line typed it
                assert state["tampers"]["bypass"] is True
                assert state["load_override_w"] == 2500
            ran += 1
    async with served(serves[1], tmp_path) as printed:
        assert printed["rtu-pty"].startswith("/dev/")
        ran += 2
    async with served(serves[2], tmp_path) as printed:  # the DL/T 645 bus
        assert printed["rtu-tcp"] == f"127.0.0.1:{bus}"
        assert printed["rtu-pty"].startswith("/dev/")
        assert printed["control"] == f"127.0.0.1:{bus_control}"
        port = Dlt645Port("bus", f"socket://127.0.0.1:{bus}", baud=2400)
        io = Dlt645MeterIO(load_dlt645_map("dlt645_single_phase"))
        try:
            assert (await io.read(port, Address.of_number(20))).relay_closed is True
        finally:
            await port.close()
        pressed = await sh(f"meter-sim ctl --control 127.0.0.1:{bus_control} button 20", tmp_path)
        assert pressed.rc == 0, pressed
        ran += 3
    assert ran == len(controls) + 5
