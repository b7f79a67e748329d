"""Dead buses speak: a bus that cannot be opened (serial device) or connected (TCP
endpoint, ``socket://``) is logged at WARNING with the OS's reason at once, then again at
a doubling interval while it stays so (never at every poll: a dead RS-485 adapter fails
every meter's poll), and at INFO when it answers again. Until then its reason is in the
health summary, so ``meter-gateway status`` and the MQTT status say why a bus is down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: the warning for a bus still unreachable is repeated after this long, then doubling...
REPEAT_FIRST_S = 60.0
#: ...up to this
REPEAT_MAX_S = 3600.0


@dataclass
class BusFaults:
    """What the gateway says about one bus's reachability."""

    bus: str
    monotonic: Callable[[], float] = time.monotonic
    #: why the bus cannot be reached (the latest reason), None while it can
    reason: str | None = None
    _since: float = 0.0
    _next_report: float = 0.0
    _repeat: float = REPEAT_FIRST_S
    #: failed attempts since the last message
    _attempts: int = 0

    def unreachable(self, reason: str) -> None:
        """An attempt to open or connect the bus failed for ``reason``."""
        now = self.monotonic()
        if self.reason is None:
            self.reason, self._since, self._attempts = reason, now, 0
            self._repeat = REPEAT_FIRST_S
            self._next_report = now + self._repeat
            log.warning("bus %s: %s", self.bus, reason)
            return
        self.reason = reason
        self._attempts += 1
        if now >= self._next_report:
            log.warning(
                "bus %s: %s (unreachable for %.0f s; %d failed attempts since the last message)",
                self.bus,
                reason,
                now - self._since,
                self._attempts,
            )
            self._attempts = 0
            self._repeat = min(self._repeat * 2, REPEAT_MAX_S)
            self._next_report = now + self._repeat

    def reachable(self) -> None:
        """The bus was opened or connected (whatever its meters answered)."""
        if self.reason is None:
            return
        log.info(
            "bus %s: reachable again after %.0f s (was: %s)",
            self.bus,
            self.monotonic() - self._since,
            self.reason,
        )
        self.reason = None
