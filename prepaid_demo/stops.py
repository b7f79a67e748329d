"""How the demo is stopped: the signals that end it, how its last line names them, and
their handlers, which the demo installs before it creates anything, so that a stop at any
moment reaches the demo (which stops its children and removes its folder) rather than
ending the process with both left behind; a stop while the site is still starting
unwinds the start as :class:`StopRequested`.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Protocol

from prepaid_demo.terminal import Console

#: The signals that stop the demo, and how its last line names them.
STOP_SIGNALS = {
    signal.SIGINT: "Ctrl-C",
    signal.SIGTERM: "SIGTERM",
    signal.SIGHUP: "terminal closed (SIGHUP)",
}


class StopRequested(Exception):  # noqa: N818 (a request, not an error)
    """A stop (Ctrl-C, SIGTERM, SIGHUP) came while the site was still starting."""


class Stoppable(Protocol):
    """What the handlers reach in the demo once it exists."""

    wake: asyncio.Event

    def request_stop(self, reason: str) -> None: ...


class Stops:
    """The stop signals' handlers, installed before anything is created: whatever arrives
    from then on is a request to the demo, never the default action that would end the
    process with its folder and children left behind."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.demo: Stoppable | None = None
        self.early: str | None = None  # a stop that came before the demo existed

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig, reason in STOP_SIGNALS.items():
            loop.add_signal_handler(sig, self.on_signal, sig, reason)
        loop.add_signal_handler(signal.SIGWINCH, self.on_resize)

    def on_signal(self, sig: signal.Signals, reason: str) -> None:
        if sig is signal.SIGHUP:
            self.console.hung_up()
        if self.demo is None:
            self.early = self.early or reason
        else:
            self.demo.request_stop(reason)

    def on_resize(self) -> None:
        if self.demo is not None:
            self.demo.wake.set()
