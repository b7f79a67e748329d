"""Where the simulator's time comes from: only the shell reads a clock; physics gets ``now``.

Time is float seconds since the UNIX epoch, in simulated time. ``VirtualClock`` is stepped
by tests; ``ScaledClock`` runs ``speed`` times faster than the wall clock (``--speed 60``:
an hour per minute) from a chosen start.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Anything that tells the simulated time."""

    def now(self) -> float: ...


class VirtualClock:
    """A clock that moves only when a test says so."""

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        """Move time forward (never back: meters integrate energy over it)."""
        if seconds < 0:
            raise ValueError("a virtual clock only moves forward")
        self._now += seconds
        return self._now

    def set(self, when: float) -> None:
        if when < self._now:
            raise ValueError("a virtual clock only moves forward")
        self._now = when


class ScaledClock:
    """Wall time sped up by ``speed``, starting at ``start`` (the real time by default)."""

    def __init__(self, speed: float = 1.0, start: float | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._origin_sim = time.time() if start is None else start
        self._origin_mono = time.monotonic()

    def now(self) -> float:
        return self._origin_sim + (time.monotonic() - self._origin_mono) * self.speed
