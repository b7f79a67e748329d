"""The gateway's clock: wall time in production; an accelerated clock for demos and tests
against a simulator running faster than real time (both must agree on how time passes,
or every reading would look like an implausible jump)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime


@dataclass
class GatewayClock:
    """UTC ``now()``; with ``speed`` > 1, time runs that much faster from ``start``."""

    speed: float = 1.0
    start: datetime | None = None
    _t0: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.speed <= 0:
            raise ValueError("clock speed must be positive")
        if self.start is None:
            self.start = datetime.now(UTC)

    def now(self) -> datetime:
        assert self.start is not None
        elapsed = (time.monotonic() - self._t0) * self.speed
        return datetime.fromtimestamp(self.start.timestamp() + elapsed, UTC)

    def real_seconds(self, clock_seconds: float) -> float:
        """How long ``clock_seconds`` of gateway time takes in real time."""
        return clock_seconds / self.speed
