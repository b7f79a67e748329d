"""Run `make demo`'s program for tests: its command line, the processes it leaves (by pid,
by command line, by parentage), and a real terminal of a set size to run it in (a private
tmux server) whose screen the test reads."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def demo_command(*flags: str) -> list[str]:
    return [sys.executable, "-m", "prepaid_demo", "--seed", "1", *flags]


def started_children(output: str) -> dict[str, int]:
    """The children the demo says it started (its ``started:`` line), by name."""
    match = re.search(r"started: (.*)", output)
    assert match, output
    return {name: int(pid) for name, pid in re.findall(r"(\w+) pid (\d+)", match.group(1))}


def until(condition: Callable[[], object], within: float, what: str) -> None:
    """Wait for another process's state, which offers nothing to await."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {within}s waiting for {what}"
        time.sleep(0.05)


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: state, ppid, ...; None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def running(pid: int) -> bool:
    """``pid`` is a live process (not a zombie waiting for its parent)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def descendants(pid: int) -> dict[int, str]:
    """Every live process below ``pid``, with its command line."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                try:
                    cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
                except OSError:
                    continue
                found[child] = cmdline.replace(b"\0", b" ").decode(errors="replace")
                frontier.append(child)
    return found


def alive_mentioning(text: str) -> list[str]:
    """Processes (not zombies) whose command line mentions ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and running(int(entry.name)):
            found.append(f"{entry.name}: {cmdline}")
    return found


def tmux_binary() -> str:
    """tmux, or the test skips saying why: only where it cannot be installed (not root;
    `make test` installs Debian's tmux when run as root, as in CI)."""
    found = shutil.which("tmux")
    if found:
        return found
    if os.geteuid() == 0:
        pytest.fail("tmux is not installed: `make tmux` installs Debian's tmux package")
    pytest.skip("tmux is not installed and installing it needs root: sudo apt-get install tmux")


@dataclass
class Terminal:
    """A real terminal (a tmux pane) of a set size, on a tmux server of its own, running
    one command; the pane stays after the command ends so its last screen can be read."""

    folder: Path
    width: int
    height: int
    tmux: str = ""

    def __post_init__(self) -> None:
        self.tmux = tmux_binary()
        self.socket = self.folder / "tmux.sock"
        self.conf = self.folder / "tmux.conf"
        # No status bar: the pane is the whole terminal, width x height.
        self.conf.write_text("set -g status off\nset -g remain-on-exit on\n")

    def _tmux(self, *args: str) -> str:
        done = subprocess.run(
            [self.tmux, "-S", str(self.socket), "-f", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert done.returncode == 0, f"tmux {' '.join(args)}: {done.stderr}"
        return done.stdout

    def start(self, command: list[str], env: dict[str, str]) -> int:
        """Run ``command`` in the pane (from the repository, with ``env`` added); its pid."""
        assignments = [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
        self._tmux(
            "new-session", "-d", "-s", "demo", "-x", str(self.width), "-y", str(self.height),
            "-c", str(REPO), *assignments, "--", *command,
        )  # fmt: skip
        return int(self.pane("#{pane_pid}"))

    def pane(self, fmt: str) -> str:
        return self._tmux("display-message", "-p", "-t", "demo", fmt).strip()

    def screen(self) -> list[str]:
        """What the pane shows, one entry per line as the program wrote it: a line the
        terminal wrapped comes back joined, so it is longer than the width."""
        return self._tmux("capture-pane", "-p", "-J", "-t", "demo").split("\n")[: self.height]

    def resize(self, width: int, height: int) -> None:
        self._tmux("resize-window", "-t", "demo", "-x", str(width), "-y", str(height))
        self.width, self.height = width, height

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "demo", *keys)

    def close(self) -> None:
        """Close the terminal, as closing its window does: the pane's program is hung up."""
        self._tmux("kill-session", "-t", "demo")

    def stop_server(self) -> None:
        subprocess.run(
            [self.tmux, "-S", str(self.socket), "kill-server"],
            capture_output=True,
            timeout=20,
            check=False,
        )
