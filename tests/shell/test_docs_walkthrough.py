"""The simulator page (Modbus and DL/T 645 meters) and the field guide, run as written: their commands are taken from the
Markdown in order and executed by a shell with the installed console scripts, against a
real simulator. Only what ties them to a real site is swapped: `/etc/prepaid-edge` for a
temporary folder, the example ports for free ones, `/dev/ttyUSB0` for the simulator's
pseudo-terminal. Commands of the other pages are checked by `tests/unit/test_docs_commands.py`
(parsed by the real CLIs) and by the tests named there."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
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
PASSPHRASE = "correct horse battery staple"


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
    env["PREPAID_EDGE_PASSPHRASE"] = PASSPHRASE
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


# ---------------------------------------------------------------------- docs/field-guide.md


async def _commission(command: str, cwd: Path, control: int) -> Ran:
    """The documented commission line: answers the relay question, types the token the
    command shows on the simulated meter's keypad (as the engineer would)."""
    proc = await _spawn(command, cwd)
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write(b"y\n")
    await proc.stdin.drain()
    lines: list[str] = []
    async with asyncio.timeout(90):
        while line := (await proc.stdout.readline()).decode():
            lines.append(line)
            if "test token on the meter's keypad:" in line:
                digits = line.split(":", 1)[1].replace(" ", "").strip()
                typed = await sh(
                    f"meter-sim ctl --control 127.0.0.1:{control} keypad 1 {digits}", cwd
                )
                assert typed.rc == 0, typed
        _, err = await proc.communicate()
    assert proc.returncode is not None
    return Ran(proc.returncode, "".join(lines), err.decode())


async def test_the_field_guide_runs_as_written(tmp_path: Path) -> None:
    etc = tmp_path / "etc-prepaid-edge"
    new_box = tmp_path / "new-box"
    new_box.mkdir()
    control = _free_port()
    toml_blocks = [b for lang, b in _blocks("field-guide.md") if lang == "toml"]
    csv_blocks = [b for lang, b in _blocks("field-guide.md") if lang == "csv"]
    assert len(toml_blocks) == 1
    assert len(csv_blocks) == 1
    steps = [
        (shown, c.replace("/etc/prepaid-edge", str(etc)))
        for shown, c in _shell_commands("field-guide.md")
    ]
    names = [c.split()[1] for _, c in steps]
    assert names == [
        "init",
        "scan",
        "keys",
        "enrol",
        "enrol",
        "commission",
        "status",
        "export",
        "import",
    ], names
    # The street: seed 7 gives the serials the guide shows (PE1-0007-00000N); every unit
    # on the line answers, so the scan of 1..247 is quick.
    sim_cmd = (
        f"meter-sim serve --meters 247 --no-tcp --rtu-pty --control 127.0.0.1:{control} --seed 7"
    )
    async with served(sim_cmd, tmp_path) as printed:
        pty = printed["rtu-pty"]
        for shown, cmd in steps:
            name = cmd.split()[1]
            if name == "init":
                result = await sh(cmd, tmp_path)
                assert result.rc == 0, result
                expected = [s.replace("/etc/prepaid-edge", str(etc)) for s in shown]
                assert result.out.splitlines() == expected
                # "Then edit gateway.toml": the guide's bus table, on this site's adapter.
                with (etc / "gateway.toml").open("a") as f:
                    f.write("\n" + toml_blocks[0].replace("/dev/ttyUSB0", pty))
            elif name == "scan":
                result = await sh(cmd, tmp_path)
                assert result.rc == 0, result
                assert "247/247 units" in result.err  # the progress line the guide shows
                # stdout is the table (the guide shows the stderr progress lines above it)
                table = result.out.splitlines()
                header = shown.index(table[0])
                rows = shown[header + 1 :]
                assert [r.split()[:2] for r in table[1 : 1 + len(rows)]] == [
                    r.split()[:2] for r in rows
                ]
                assert len(table) == 1 + 247
            elif name == "keys":
                # The vending office's key, from which it derives the meter keys it hands out.
                made = await sh("meter-provision keys new-vending-key --out vending.key", etc)
                assert made.rc == 0, made
                (etc / "keys").mkdir()
                for n in (1, 2, 3):
                    result = await sh(cmd.replace("000001", f"00000{n}"), etc)
                    assert result.rc == 0, result
                    assert (etc / "keys" / f"PE1-00000{n}.key").stat().st_mode & 0o077 == 0
            elif name == "enrol" and "--csv" not in cmd:
                result = await sh(cmd, etc)
                assert result.rc == 0, result
                assert result.out.splitlines() == shown
            elif name == "enrol":
                (etc / "street-7.csv").write_text(csv_blocks[0])
                before = await sh("meter-provision status --config gateway.toml --json", etc)
                result = await sh(cmd, etc)
                assert result.rc != 0
                assert result.err.strip() == shown[0]
                after = await sh("meter-provision status --config gateway.toml --json", etc)
                assert after.out == before.out  # "the store holds none of the file"
                # "Fix line 4 and run the same command again" (PE1-000001 is enrolled
                # already, by the single-meter command above).
                rows = csv_blocks[0].splitlines()
                fixed = [rows[0], *(r for r in rows[2:])]
                (etc / "street-7.csv").write_text("\n".join(fixed).replace(",x,", ",3,") + "\n")
                result = await sh(cmd, etc)
                assert result.rc == 0, result
            elif name == "commission":
                result = await _commission(cmd, etc, control)
                assert result.rc == 0, result
                out = result.out.splitlines()
                for line in shown[2:]:
                    # Same checks in the same order; the values are the meter's own.
                    assert any(o.split()[:2] == line.split()[:2] for o in out), (line, out)
                assert out[-1] == shown[-1]
            elif name == "status":
                result = await sh(cmd, etc)
                assert result.rc == 0, result
                lines = result.out.splitlines()
                assert lines[0].split() == shown[0].split()
                assert [r.split()[:4] for r in lines[1:3]] == [r.split()[:4] for r in shown[1:3]]
                assert lines[1].split()[-1] == "pass"  # commissioned above
            elif name == "export":
                result = await sh(cmd, etc)
                assert result.rc == 0, result
                assert result.out.splitlines() == shown
            elif name == "import":
                # The new box: init, the same bus names, then the documented command.
                made = await sh(
                    f"meter-provision init --dir {new_box} --gateway-id gw-street-7b",
                    tmp_path,
                )
                assert made.rc == 0, made
                with (new_box / "gateway.toml").open("a") as f:
                    f.write("\n" + toml_blocks[0].replace("/dev/ttyUSB0", pty))
                shutil.copy(etc / "street-7.json", new_box / "street-7.json")
                result = await sh(cmd, new_box)
                assert result.rc == 0, result
                assert result.out.splitlines() == shown
                moved = json.loads(
                    (await sh("meter-provision status --config gateway.toml --json", new_box)).out
                )
                assert sorted(m["meter"] for m in moved) == [
                    "PE1-000001",
                    "PE1-000002",
                    "PE1-000003",
                ]
