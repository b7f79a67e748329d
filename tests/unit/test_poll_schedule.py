"""Poll intervals follow the credit forecast within their bounds, and dead meters back off exponentially up to a cap."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from gateway.poll_schedule import POLLS_BEFORE_EXHAUSTION, backoff_for, interval_for

BOUNDS = {"normal": 60.0, "minimum": 5.0, "maximum": 900.0}


def test_interval_shrinks_near_exhaustion_and_grows_with_weeks_of_credit() -> None:
    assert interval_for(None, **BOUNDS) == 60.0
    assert interval_for(timedelta(0), **BOUNDS) == 5.0
    assert interval_for(timedelta(minutes=-3), **BOUNDS) == 5.0
    assert interval_for(timedelta(minutes=8), **BOUNDS) == 60.0
    assert interval_for(timedelta(minutes=2), **BOUNDS) == 15.0
    assert interval_for(timedelta(weeks=3), **BOUNDS) == 900.0


@given(st.integers(-(10**7), 10**8))
def test_interval_always_within_bounds(seconds: int) -> None:
    got = interval_for(timedelta(seconds=seconds), **BOUNDS)
    assert 5.0 <= got <= 900.0
    if 5.0 * POLLS_BEFORE_EXHAUSTION < seconds < 900.0 * POLLS_BEFORE_EXHAUSTION:
        assert got == seconds / POLLS_BEFORE_EXHAUSTION


def test_backoff_doubles_to_the_cap() -> None:
    got = [backoff_for(n, interval=10.0, cap=300.0) for n in range(8)]
    assert got == [10.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0]
    assert backoff_for(10_000, interval=10.0, cap=300.0) == 300.0
