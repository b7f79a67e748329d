"""``add_sample``'s quick path keeps exactly the samples its definition keeps (the last
``SAMPLES_KEPT`` strictly older than the new one and within ``HORIZON`` of it), for sample
windows in the order ``add_sample`` builds them: readings late, early, repeated or after
a long silence."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from gateway.core.forecast import HORIZON, SAMPLES_KEPT, SpendSample, add_sample

START = datetime(2026, 11, 2, tzinfo=UTC)


def by_definition(samples: tuple[SpendSample, ...], sample: SpendSample) -> tuple[SpendSample, ...]:
    kept = [s for s in samples if s.at < sample.at and sample.at - s.at <= HORIZON]
    return (*kept[-(SAMPLES_KEPT - 1) :], sample)


#: steps between readings, in minutes: repeats (0), backwards, ordinary, past the horizon
STEPS = st.integers(-90, 90) | st.sampled_from([0, 15, 2880, 2881, 10_000])


@given(st.lists(STEPS, max_size=60), st.integers(0, 10**6))
def test_add_sample_keeps_what_its_definition_keeps(steps: list[int], charged: int) -> None:
    samples: tuple[SpendSample, ...] = ()
    at = START
    for n, minutes in enumerate(steps):
        at += timedelta(minutes=minutes)
        sample = SpendSample(at, charged + n)
        expected = by_definition(samples, sample)
        samples = add_sample(samples, sample)
        assert samples == expected
        assert all(a.at < b.at for a, b in itertools.pairwise(samples))


def test_a_full_window_slides_by_one() -> None:
    samples = tuple(SpendSample(START + timedelta(minutes=15 * n), n) for n in range(SAMPLES_KEPT))
    newest = SpendSample(START + timedelta(minutes=15 * SAMPLES_KEPT), 99)
    assert add_sample(samples, newest) == (*samples[1:], newest)
