"""The worked example of docs/dlt645.md runs as written: the simulator, init, the bus added to the config from the page's TOML, scan, keys, enrolment of a switched and an ESAM meter, commissioning, and a gateway that reports the drifting clocks, broadcasts the time, trips meter 1 at exhaustion and says why it does not switch meter 2; each command's output is the page's up to the figures (digits), and the gateway's log holds the page's lines."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from pathlib import Path

import pytest

from tests.integration.helpers import eventually
from tests.shell.test_docs_simulator_page import ROOT, _free_port, _spawn, served, sh
from tests.support.mosquitto import Mosquitto
from tests.unit.test_docs_commands import _commands, _expand

pytestmark = [pytest.mark.asyncio, pytest.mark.broker]

DOC = (ROOT / "docs" / "dlt645.md").read_text()
SECTION = DOC[DOC.index("## A worked example on the simulator") : DOC.index("## Limits")]
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.DOTALL)


def _console(body: str) -> list[tuple[str, list[str]]]:
    """Each command of a console block with the output lines the page shows after it."""
    shown: list[list[str]] = []
    continued = False
    for line in body.splitlines():
        if line.startswith("$ "):
            shown.append([])
        elif not continued and shown and line.strip():
            shown[-1].append(line)
        continued = line.rstrip().endswith("\\")
    commands = list(_expand(_commands(body)))
    assert len(commands) == len(shown), commands
    return list(zip(commands, shown, strict=True))


def _same(line: str) -> str:
    """A line up to its figures: every run of digits is one ``N``, spaces collapsed."""
    return " ".join(re.sub(r"\d+", "N", line).split())


async def test_the_worked_example_runs_as_written(tmp_path: Path, mosquitto: Mosquitto) -> None:
    blocks = FENCE.findall(SECTION)
    consoles = [body for lang, body in blocks if lang == "console"]
    (toml,) = [body for lang, body in blocks if lang == "toml"]
    (log_lines,) = [body.splitlines() for lang, body in blocks if lang == "text"]
    bus, control = _free_port(), _free_port()

    def local(text: str) -> str:
        text = text.replace("127.0.0.1:5030", f"127.0.0.1:{bus}")
        text = text.replace("127.0.0.1:5031", f"127.0.0.1:{control}")
        return text.replace("mqtt://127.0.0.1:1883", f"mqtt://127.0.0.1:{mosquitto.port}")

    ((serve, serve_shown),) = _console(consoles[0])
    steps = _console(consoles[1]) + _console(consoles[2])
    assert steps[-1][0] == "meter-gateway run --config site/gateway.toml"
    async with served(local(serve), tmp_path) as printed:
        assert printed["rtu-tcp"] == f"127.0.0.1:{bus}"
        assert printed["control"] == f"127.0.0.1:{control}"
        assert serve_shown[-1].startswith("ready: protocol dlt645")
        ran = 0
        for command, shown in steps[:-1]:
            result = await sh(local(command), tmp_path)
            assert result.rc == 0, (command, result)
            out = result.out.replace(f"{tmp_path}/", "")
            expected = [_same(local(line)) for line in shown]
            if command.startswith("meter-provision init"):
                config = tmp_path / "site" / "gateway.toml"
                config.write_text(config.read_text() + "\n" + local(toml))
            assert [_same(line) for line in out.splitlines()] == expected, command
            ran += 1
        assert ran == len(steps) - 1

        gateway = await _spawn(f"exec {steps[-1][0]} 2>&1", tmp_path)  # its log on stdout
        assert gateway.stdout is not None
        logged: list[str] = []
        wanted = [_same(line) for line in log_lines]

        async def read_log() -> None:
            assert gateway.stdout is not None
            while line := (await gateway.stdout.readline()).decode():
                # "2026-12-07 01:57:31,320 WARNING ...": the page leaves the time out
                logged.append(_same(line.split(" ", 2)[2] if line[:4].isdigit() else line))

        reader = asyncio.create_task(read_log())
        try:
            try:
                await eventually(lambda: all(w in logged for w in wanted), 60, "the log lines")
            except AssertionError:
                missing = [w for w in wanted if w not in logged]
                raise AssertionError(f"not logged: {missing}; logged: {logged}") from None
        finally:
            gateway.send_signal(signal.SIGINT)  # Ctrl-C
            code = await asyncio.wait_for(gateway.wait(), 30)
            await reader
        assert code == 0, logged  # Ctrl-C is the service's normal end
        state = await sh(f"meter-sim ctl --control 127.0.0.1:{control} state 1", tmp_path)
        meter = json.loads(state.out)
        assert meter["relay_closed"] is False
        assert meter["dlt645"]["relay_command_open"] is True
        assert "trip" in meter["dlt645"]["commands"]
        esam = json.loads(
            (await sh(f"meter-sim ctl --control 127.0.0.1:{control} state 2", tmp_path)).out
        )
        assert esam["relay_closed"] is True
        assert esam["dlt645"]["commands"] == []
