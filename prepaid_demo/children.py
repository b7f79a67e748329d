"""The demo's child processes: each in its own process group, stopped in order, and
killed as a group if it does not stop, so nothing survives the demo.

Own process groups keep a terminal's Ctrl-C away from the children: the demo receives
it and stops them itself, gateway first (it publishes ``offline`` and closes its store),
then the simulator, then the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

STOP_TIMEOUT_S = 10.0
_PR_SET_PDEATHSIG = 1
# Loaded once here, in the parent: the code between fork and exec must not import or load.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGKILL when the demo dies, even by SIGKILL, so a
    demo killed hard still leaves nothing running. SIGKILL rather than SIGTERM: nobody is
    left to wait for a clean stop, and the gateway's store is built to survive a kill."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ChildError(RuntimeError):
    """A child process did not start, or died; carries the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str | None:
    """The real broker when installed, also where Debian puts it outside a user's PATH."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Child:
    name: str
    proc: asyncio.subprocess.Process
    log: Path
    stdout_lines: list[str] = field(default_factory=list)
    new_line: asyncio.Event = field(default_factory=asyncio.Event)
    pump: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def _pump(self) -> None:
        """Copy the child's stdout to its log, keeping the lines for whoever waits on them."""
        assert self.proc.stdout is not None
        with self.log.open("ab") as out:
            while line := await self.proc.stdout.readline():
                out.write(line)
                out.flush()
                self.stdout_lines.append(line.decode(errors="replace").rstrip())
                self.new_line.set()
        self.new_line.set()

    async def wait_for_line(self, predicate: Callable[[str], bool], within: float) -> str:
        """The first stdout line that satisfies ``predicate``; ChildError if the child ends or
        ``within`` seconds pass first."""
        seen = 0
        async with asyncio.timeout(within):
            while True:
                for line in self.stdout_lines[seen:]:
                    if predicate(line):
                        return line
                seen = len(self.stdout_lines)
                if self.proc.returncode is not None or (self.pump and self.pump.done()):
                    await self.proc.wait()
                    raise ChildError(
                        f"{self.name} exited with {self.proc.returncode}:\n{log_tail(self.log)}"
                    )
                self.new_line.clear()
                await self.new_line.wait()


@dataclass
class Children:
    """Every process the demo started, stopped in reverse order of starting."""

    folder: Path
    started: list[Child] = field(default_factory=list)

    async def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        log = self.folder / f"{name}.log"
        with log.open("ab") as err:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                start_new_session=True,
                env=env,
                preexec_fn=_die_with_parent,  # one prctl call, nothing that takes a lock
            )
        child = Child(name, proc, log)
        child.pump = asyncio.create_task(child._pump(), name=f"pump:{name}")
        self.started.append(child)
        return child

    def dead(self) -> Child | None:
        """A child that has ended on its own, if any."""
        for child in self.started:
            if child.proc.returncode is not None:
                return child
        return None

    async def stop_all(self) -> list[str]:
        """Stop every child (SIGTERM to its group, SIGKILL after a grace period); what
        happened to each, one line per child."""
        report = []
        for child in reversed(self.started):
            report.append(await _stop(child))
        return report


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


async def _stop(child: Child) -> str:
    pgid = child.pid  # start_new_session: the child leads its own group
    if child.proc.returncode is None:
        _signal_group(pgid, signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await child.proc.wait()
            how = f"stopped (exit {child.proc.returncode})"
        except TimeoutError:
            _signal_group(pgid, signal.SIGKILL)
            await child.proc.wait()
            how = "killed after not stopping"
    else:
        how = f"had already exited ({child.proc.returncode})"
    # Anything the child left in its group goes with it.
    if _signal_group(pgid, signal.SIGKILL):
        how += "; leftovers in its process group killed"
    if child.pump is not None:
        with contextlib.suppress(asyncio.CancelledError):
            await child.pump
    return f"{child.name} (pid {child.pid}) {how}"


def address_after(child: Child, prefix: str) -> tuple[str, int]:
    for line in child.stdout_lines:
        if line.startswith(prefix):
            host, _, port = line[len(prefix) :].split()[0].rpartition(":")
            return host, int(port)
    raise ChildError(f"{child.name} did not say where it listens ({prefix.strip()})")


async def wait_for_port(child: Child, host: str, port: int) -> None:
    """Until the broker accepts a connection (mosquitto prints nothing when ready); the
    caller bounds the wait."""
    while True:
        if child.proc.returncode is not None:
            raise ChildError(f"{child.name} exited with {child.proc.returncode}")
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
