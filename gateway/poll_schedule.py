"""When to poll a meter next: pure functions of the forecast and of its failures.

A meter close to running out of credit is polled more often (so a cut-off happens
within one short interval of exhaustion), one with weeks of credit less often, always
within the configured bounds. A meter that stopped answering is backed off
exponentially, so a dead meter never eats the bus time of the healthy ones, and one
already cut off is read now and then, not at the shortest interval.
"""

from __future__ import annotations

from datetime import timedelta

#: Aim to poll about this many times before the forecast exhaustion.
POLLS_BEFORE_EXHAUSTION = 8


def interval_for(
    time_to_exhaustion: timedelta | None,
    *,
    normal: float,
    minimum: float,
    maximum: float,
    cut_off: float | None = None,
) -> float:
    """Seconds until the next poll of a meter that answers: ``cut_off`` for a meter whose
    supply is already cut (nothing to cut any more: a reading now and then), else by
    its forecast."""
    if cut_off is not None:
        return cut_off
    if time_to_exhaustion is None:
        return normal
    seconds = time_to_exhaustion.total_seconds()
    if seconds <= 0:
        return minimum
    return min(maximum, max(minimum, seconds / POLLS_BEFORE_EXHAUSTION))


def backoff_for(consecutive_failures: int, *, interval: float, cap: float) -> float:
    """Seconds until the next attempt at a meter that failed ``consecutive_failures`` polls
    in a row (1 = it just failed once): the normal interval, doubling per failure."""
    if consecutive_failures <= 0:
        return interval
    return min(cap, interval * float(2 ** min(consecutive_failures - 1, 30)))
