"""When will the credit run out? From the recent rate of spending, for adaptive polling and
early warnings."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.core.frozen import quick_init

#: how many recent samples the forecast keeps, and how far back
SAMPLES_KEPT = 12
HORIZON = timedelta(hours=48)
#: beyond this many seconds a forecast is "never"
_FAR = timedelta.max.total_seconds() / 2


@quick_init
@dataclass(frozen=True, slots=True)
class SpendSample:
    """The meter's cumulative energy charge (minor units) at a reading."""

    at: datetime
    charged: int


def add_sample(samples: tuple[SpendSample, ...], sample: SpendSample) -> tuple[SpendSample, ...]:
    """Keep the last ``SAMPLES_KEPT`` samples within ``HORIZON`` of the newest.

    Samples are kept oldest first, so when the newest kept one is older than ``sample`` and
    the oldest is within the horizon, every one is kept and only the count trims (the
    common case, once per reading); otherwise each is checked."""
    if samples and samples[-1].at < sample.at and sample.at - samples[0].at <= HORIZON:
        return (*samples[-(SAMPLES_KEPT - 1) :], sample)
    kept = [s for s in samples if s.at < sample.at and sample.at - s.at <= HORIZON]
    return (*kept[-(SAMPLES_KEPT - 1) :], sample)


def exhaustion_time(
    samples: tuple[SpendSample, ...],
    credit_left: int,
    standing_charge_per_day: int,
    now: datetime,
) -> datetime | None:
    """When ``credit_left`` (minor units until the meter is exhausted) will be spent at the
    recent rate plus the standing charge; ``now`` if already spent; None if nothing is
    being spent."""
    if credit_left <= 0:
        return now
    per_second = 0.0
    if len(samples) >= 2:
        span = (samples[-1].at - samples[0].at).total_seconds()
        if span > 0:
            per_second = (samples[-1].charged - samples[0].charged) / span
    per_second += standing_charge_per_day / 86_400
    if per_second <= 0:
        return None
    seconds = credit_left / per_second
    if seconds > _FAR:
        return None
    try:
        return now + timedelta(0, seconds)  # positional: the same value, built faster
    except OverflowError:
        return None
