"""A command typed in a terminal, as a person runs it: ``bash -c`` on its own
pseudo-terminal (its controlling terminal, so Ctrl-C is a real ``^C`` the line discipline
turns into SIGINT for the foreground process group, prompts see a terminal and answers
are echoed), and each terminal's working folder and exported variables carried from one
command to the next as an interactive shell keeps them (``cd``, ``. activate``)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import struct
import termios
from dataclasses import dataclass, field
from pathlib import Path

CTRL_C = b"\x03"
#: rows, columns: roomy, so nothing a command prints depends on the width
WINDOW = (50, 200)


def _controlling_terminal() -> None:
    """In the child, after its new session: stdin (the pty) becomes its terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@dataclass
class Terminal:
    """One terminal window: where it is and what it exports."""

    name: str
    cwd: Path
    env: dict[str, str]
    state_dir: Path
    running: TypedCommand | None = None

    async def type_command(self, command: str) -> TypedCommand:
        """Start ``command`` as the person typed it; the state it leaves is kept."""
        assert self.running is None or self.running.ended, f"{self.name} is busy"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cwd_file, env_file = self.state_dir / "cwd", self.state_dir / "env"
        for f in (cwd_file, env_file):
            f.unlink(missing_ok=True)
        script = (
            f"{command}\n__walk_rc=$?\npwd > '{cwd_file}'\nenv -0 > '{env_file}'\nexit $__walk_rc\n"
        )
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *WINDOW, 0, 0))
        os.set_blocking(master, False)
        try:
            proc = await asyncio.create_subprocess_exec(
                "bash",
                "-c",
                script,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
                preexec_fn=_controlling_terminal,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self.running = TypedCommand(self, command, proc, master)
        self.running.start_reading()
        return self.running

    def adopt_state(self) -> None:
        """After a command ended: the folder it left and the variables it exported."""
        cwd_file, env_file = self.state_dir / "cwd", self.state_dir / "env"
        if cwd_file.exists():
            self.cwd = Path(cwd_file.read_text().strip())
        if env_file.exists():
            pairs = (e.partition("=") for e in env_file.read_text().split("\0") if e)
            self.env = {k: v for k, _, v in pairs if k}


@dataclass
class TypedCommand:
    terminal: Terminal
    command: str
    proc: asyncio.subprocess.Process
    master: int
    raw: str = ""
    #: how many complete screen lines earlier steps have matched
    cursor: int = 0
    eof: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _waiter: asyncio.Task[int] | None = None

    @property
    def ended(self) -> bool:
        return self.proc.returncode is not None and self.eof

    def start_reading(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.master, self._read)
        self._waiter = asyncio.create_task(self._wait(), name=f"walk:{self.terminal.name}")

    async def _wait(self) -> int:
        code = await self.proc.wait()
        self.changed.set()
        return code

    def _read(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except BlockingIOError:
            return
        except OSError:  # EIO: every process holding the terminal has closed it
            data = b""
        if data:
            self.raw += data.decode("utf-8", errors="replace")
        else:
            self._close_master()
        self.changed.set()

    def _close_master(self) -> None:
        if not self.eof:
            asyncio.get_running_loop().remove_reader(self.master)
            os.close(self.master)
            self.eof = True

    def type(self, text: bytes) -> None:
        os.write(self.master, text)

    async def next_change(self, deadline: float) -> None:
        """Until more output arrives or the command ends; TimeoutError at ``deadline``
        (the loop's clock)."""
        self.changed.clear()
        async with asyncio.timeout_at(deadline):
            await self.changed.wait()

    async def finish(self, deadline: float) -> int:
        """Its exit status once it ended and the terminal drained."""
        async with asyncio.timeout_at(deadline):
            while not self.ended:
                await self.next_change(deadline)
        assert self._waiter is not None
        code = await self._waiter
        self.terminal.adopt_state()
        return code

    async def kill(self) -> None:
        """End it and everything it started (a walk that failed half way)."""
        if self.proc.returncode is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, sig)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5):
                        await self.proc.wait()
                        break
        if self._waiter is not None:
            await self._waiter
        self._close_master()
