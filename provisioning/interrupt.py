"""Ctrl-C and SIGTERM stop a provisioning command cleanly: the work in progress is
cancelled (so ports close and a relay under test is put back), the command keeps what it
had done (a scan prints its partial table) and ``main`` prints one line and exits 130 or
143, never a traceback.

Signals are turned into :class:`Interrupted` only in the main thread (tests run commands
in other threads, where Python cannot install signal handlers).
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, TypeVar

from protocol.cli import ExitCode, exit_code_for_signal

_T = TypeVar("_T")
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):  # noqa: N818 (the operator's stop, not an error)
    """The operator stopped the command (Ctrl-C or SIGTERM)."""

    def __init__(self, signum: int, kept: str = "") -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        #: what the command kept of its work, said after "interrupted"
        self.kept = kept

    def describe(self) -> str:
        """``interrupted by SIGINT; 37 of 247 units scanned (the table is partial)``"""
        kept = f"; {self.kept}" if self.kept else ""
        return f"interrupted by {signal.Signals(self.signum).name}{kept}"

    @property
    def exit_code(self) -> ExitCode:
        return exit_code_for_signal(self.signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise(signum: int, _frame: FrameType | None) -> None:
    _ignore_further()
    raise Interrupted(signum)


def _ignore_further() -> None:
    """The operator's stop is under way: a second press changes nothing. Left to the
    default action, a second SIGTERM would kill the process before it says what it kept
    (exit -15, not 143); turned into another Interrupted, it would cut the first one's
    clean-up short."""
    for sig in _SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """While inside, SIGINT and SIGTERM raise :class:`Interrupted` in synchronous code;
    the handlers before are restored on the way out, unless a stop is under way (then
    they stay ignored until the process exits)."""
    if not _main_thread():
        yield
        return
    before = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    for sig in _SIGNALS:
        signal.signal(sig, _raise)
    try:
        yield
    finally:
        for sig, handler in before.items():
            if signal.getsignal(sig) is not signal.SIG_IGN:
                signal.signal(sig, handler)


def run_async(main: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """``asyncio.run(main())``, where SIGINT or SIGTERM cancels ``main`` (its ``finally``
    blocks run, awaiting as they need) and then raises :class:`Interrupted`."""

    async def guarded() -> _T:
        task = asyncio.current_task()
        assert task is not None
        received: list[int] = []
        loop = asyncio.get_running_loop()

        def stop(signum: int) -> None:
            if not received:
                received.append(signum)
                task.cancel()

        before = {sig: signal.getsignal(sig) for sig in _SIGNALS} if _main_thread() else {}
        for sig in before:
            loop.add_signal_handler(sig, stop, sig)
        try:
            result = await main()
        except asyncio.CancelledError:
            if received:
                raise Interrupted(received[0]) from None
            raise
        finally:
            for sig, handler in before.items():
                loop.remove_signal_handler(sig)
                # back to the synchronous handlers, or ignored once a stop is under way
                signal.signal(sig, signal.SIG_IGN if received else handler)
        if received:  # ``main`` finished its work despite the signal
            raise Interrupted(received[0])
        return result

    return asyncio.run(guarded())
