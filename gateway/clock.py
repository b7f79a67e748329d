"""The gateway's clock: wall time in production; an accelerated clock for demos and tests
against a simulator running faster than real time (both must agree on how time passes,
or every reading would look like an implausible jump)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime


@dataclass
class GatewayClock:
    """UTC ``now()``; with ``speed`` > 1, time runs that much faster: the clock read
    ``start`` at the real instant ``anchor``. A fixed anchor keeps the clock where it was
    across restarts (a restarted gateway must not see time go back)."""

    speed: float = 1.0
    start: datetime | None = None
    anchor: datetime | None = None
    _anchor_s: float = field(init=False)
    _start_s: float = field(init=False)

    def __post_init__(self) -> None:
        if self.speed <= 0:
            raise ValueError("clock speed must be positive")
        real_now = time.time()
        self._anchor_s = self.anchor.timestamp() if self.anchor is not None else real_now
        self._start_s = self.start.timestamp() if self.start is not None else self._anchor_s

    def now(self) -> datetime:
        elapsed = (time.time() - self._anchor_s) * self.speed
        return datetime.fromtimestamp(self._start_s + elapsed, UTC)
