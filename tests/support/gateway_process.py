"""A `meter-gateway run` process for tests, as an operator runs it (the console entry, a
config file, its log in a file), and the wait for a gateway's first readings."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from tests.integration.helpers import eventually

if TYPE_CHECKING:
    from gateway.service import Gateway


def start_gateway(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """``python -m gateway run`` as an operator starts it, its output appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


class GatewayProcess:
    """One gateway process at a time on ``config``; its output goes to ``log``."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        self.proc = start_gateway(self.config, self.log)
        return self.proc

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM, as systemd stops it; its exit code (None if it was not running)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash or a power cut would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def logged(self, needle: str) -> int:
        """How often ``needle`` is in the log so far."""
        return self.text().count(needle)

    async def wait_logged(self, needle: str, count: int = 1, within: float = 20.0) -> None:
        """Until the log holds ``needle`` ``count`` times; fails at once if the process ends."""

        def seen() -> bool:
            if not self.alive():
                raise AssertionError(f"the gateway exited:\n{self.text()[-3000:]}")
            return self.logged(needle) >= count

        await eventually(seen, within, f"{needle!r} in the gateway's log")


async def first_readings(
    gateway: Gateway, meters: Iterable[str] | None = None, within: float = 10.0
) -> None:
    """Until every meter (or those named) has a committed reading: its register baseline."""
    wanted = list(meters) if meters is not None else list(gateway.meters)
    await eventually(
        lambda: all(gateway.meters[m].state.ledger.register_wh is not None for m in wanted),
        within,
        "each meter's first reading",
    )
