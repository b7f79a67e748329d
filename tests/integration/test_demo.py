"""`make demo`'s program run unattended tells the whole story (low credit, disconnection, keypad top-up accepted, reconnection, replay rejected) with the real mosquitto, with the embedded broker chosen by flag, and with no mosquitto on the machine (the binary hidden in a private mount namespace), exits 0, and leaves no process behind, also when stopped with Ctrl-C or killed with SIGKILL."""

from __future__ import annotations

import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from tests.support.demo_run import (
    REPO,
    alive_mentioning,
    demo_command,
    running,
    started_children,
    until,
)
from tests.support.mosquitto import mosquitto_binary

pytestmark = [pytest.mark.slow]

DURATION_S = 32
STORY = (
    "low credit warning",
    "DISCONNECTED (credit_exhausted)",
    "keypad top-up accepted",
    "RECONNECTED (credit_restored)",
    "replay rejected (replayed)",
)


def _demo(workdir: Path, *flags: str) -> list[str]:
    return demo_command("--workdir", str(workdir), *flags)


def _survivors(children: dict[str, int], workdir: Path) -> list[str]:
    """The demo's children still running, by pid, and anything else using its folder."""
    left = [f"{name} (pid {pid})" for name, pid in children.items() if running(pid)]
    return left + alive_mentioning(str(workdir))


def _assert_nothing_left(children: dict[str, int], workdir: Path) -> None:
    assert set(children) == {"broker", "simulator", "gateway"}
    assert _survivors(children, workdir) == []


def _story_order(lines: list[str]) -> None:
    """On the meter the demo topped up: cut, accepted, reconnected, replay refused, in order."""
    typed = next(line for line in lines if "demo types a keypad top-up" in line)
    meter = re.search(r"(PE1-\d{6})", typed)
    assert meter
    mine = [line for line in lines if meter.group(1) in line]
    positions = [
        next(i for i, line in enumerate(mine) if marker in line)
        for marker in (
            "DISCONNECTED",
            "demo types a keypad top-up",
            "keypad top-up accepted",
            "RECONNECTED",
            "demo types the same 20 digits again",
            "replay rejected",
        )
    ]
    assert positions == sorted(positions), mine


def _without_mosquitto(command: list[str]) -> list[str]:
    """``command`` as on a machine without mosquitto: in a private mount namespace where
    the installed binary is covered by /dev/null (not executable), with a PATH that has no
    mosquitto either. Needs root and util-linux's unshare, as in CI."""
    binary = mosquitto_binary()
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("hiding the mosquitto binary needs root and unshare (CI has both)")
    hide = f"mount --bind /dev/null {shlex.quote(binary)} && " if binary else ""
    path = os.pathsep.join(
        d
        for d in os.environ.get("PATH", "").split(os.pathsep)
        if not (Path(d) / "mosquitto").exists()
    )
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        f'{hide}PATH={shlex.quote(path)} exec "$@"',
        "sh",
        *command,
    ]


@pytest.mark.parametrize(
    "broker",
    [
        pytest.param("mosquitto", marks=pytest.mark.broker),
        pytest.param("embedded", id="embedded-amqtt"),
        pytest.param("uninstalled", id="no-mosquitto-anywhere"),
    ],
)
def test_unattended_demo_tells_the_story_and_cleans_up(tmp_path: Path, broker: str) -> None:
    if broker == "mosquitto" and mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed (make mosquitto)")
    workdir = tmp_path / "site"
    flags = ["--duration", str(DURATION_S)]
    if broker == "embedded":
        flags.append("--no-mosquitto")
    command = _demo(workdir, *flags)
    if broker == "uninstalled":
        command = _without_mosquitto(command)
    done = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=DURATION_S + 60,
        check=False,
    )
    output = done.stdout
    assert done.returncode == 0, output + done.stderr
    expected_broker = "broker: mosquitto (real broker" if broker == "mosquitto" else "broker: amqtt"
    if broker == "uninstalled":
        assert "mosquitto" not in output.split("broker:", 1)[1].splitlines()[0], output
    assert expected_broker in output
    for marker in STORY:
        assert marker in output, f"{marker!r} missing from the demo's output:\n{output}"
    assert "story complete" in output
    _story_order(output.splitlines())
    assert f"demo over (--duration {DURATION_S} s reached); exit 0" in output
    for name in ("gateway", "simulator", "broker"):
        assert re.search(rf"stopped: {name} \(pid \d+\) stopped \(exit 0\)", output), output
    _assert_nothing_left(started_children(output), workdir)


@pytest.mark.broker
def test_ctrl_c_stops_every_child_and_exits_0(tmp_path: Path) -> None:
    workdir = tmp_path / "site"
    proc = subprocess.Popen(
        _demo(workdir),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, name="demo-stdout", daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        while True:
            line = lines.get(timeout=60)
            assert line is not None, "".join(seen)
            seen.append(line)
            if "gateway gw-demo is online" in line:
                break
        os.kill(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends the demo
        assert proc.wait(timeout=40) == 0, "".join(seen)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    assert proc.stdout is not None
    proc.stdout.close()
    while (line := lines.get(timeout=5)) is not None:
        seen.append(line)
    output = "".join(seen)
    assert "demo over (Ctrl-C); exit 0" in output
    _assert_nothing_left(started_children(output), workdir)


@pytest.mark.broker
def test_a_demo_killed_hard_takes_its_children_with_it(tmp_path: Path) -> None:
    workdir = tmp_path / "site"
    log = tmp_path / "demo.out"
    with log.open("w") as out:
        proc = subprocess.Popen(_demo(workdir), cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        until(lambda: "gateway gw-demo is online" in log.read_text(), 60, "the gateway online")
        children = started_children(log.read_text())
        assert set(children) == {"broker", "simulator", "gateway"}
        assert all(running(pid) for pid in children.values())
    finally:
        proc.kill()  # SIGKILL: the demo cleans up nothing itself
        proc.wait()
    until(lambda: _survivors(children, workdir) == [], 20, "every child gone")
