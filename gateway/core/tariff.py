"""Tariffs as data: flat, time of use, tiered blocks, standing charge, debt recovery, schedules.

A delta of energy that spans a price boundary (a time-of-use period edge, local midnight,
a tier settlement period start, a scheduled tariff change) is split at the boundary by
*time interpolation*: the energy is assumed to have been used at a constant rate between
the two readings, and each sub-interval gets ``floor(E * elapsed_to_boundary / elapsed)``
cumulative Wh, so the parts are whole Wh and always add up to the delta exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum
from fractions import Fraction
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.core.money import energy_cost


class DayType(StrEnum):
    WEEKDAY = "weekday"
    WEEKEND = "weekend"
    HOLIDAY = "holiday"


def _check_price(price: Decimal, what: str) -> None:
    if not price.is_finite() or price < 0:
        raise ValueError(f"{what} must be a finite price >= 0, got {price}")


def zone(name: str) -> ZoneInfo:
    """The time zone called ``name``; ValueError for an unknown one."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


@dataclass(frozen=True, slots=True)
class FlatPricing:
    price_per_kwh: Decimal
    kind: Literal["flat"] = "flat"

    def __post_init__(self) -> None:
        _check_price(self.price_per_kwh, "price_per_kwh")


@dataclass(frozen=True, slots=True)
class TouPeriod:
    """A price for part of the day on some day types; ``start > end`` wraps past midnight
    within the same local day (``[start, 24:00)`` and ``[00:00, end)``)."""

    day_types: frozenset[DayType]
    start: time
    end: time
    price_per_kwh: Decimal

    def __post_init__(self) -> None:
        _check_price(self.price_per_kwh, "period price_per_kwh")
        if self.start == self.end:
            raise ValueError("a time-of-use period needs start != end")
        if not self.day_types:
            raise ValueError("a time-of-use period needs at least one day type")
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("period times are local wall-clock times, without a zone")

    def covers(self, day_type: DayType, at: time) -> bool:
        if day_type not in self.day_types:
            return False
        if self.start < self.end:
            return self.start <= at < self.end
        return at >= self.start or at < self.end


@dataclass(frozen=True, slots=True)
class TimeOfUsePricing:
    """Prices by period of the local day and day type; the first matching period wins."""

    periods: tuple[TouPeriod, ...]
    default_price_per_kwh: Decimal
    kind: Literal["tou"] = "tou"

    def __post_init__(self) -> None:
        _check_price(self.default_price_per_kwh, "default_price_per_kwh")

    def price_at(self, day_type: DayType, at: time) -> Decimal:
        for period in self.periods:
            if period.covers(day_type, at):
                return period.price_per_kwh
        return self.default_price_per_kwh


@dataclass(frozen=True, slots=True)
class TierBlock:
    """Energy in the settlement period up to ``up_to_wh`` (``None``: no upper bound)."""

    up_to_wh: int | None
    price_per_kwh: Decimal

    def __post_init__(self) -> None:
        _check_price(self.price_per_kwh, "block price_per_kwh")
        if self.up_to_wh is not None and self.up_to_wh <= 0:
            raise ValueError("a tier block's up_to_wh must be > 0")


@dataclass(frozen=True, slots=True)
class TieredPricing:
    """Price steps by cumulative consumption in a monthly or yearly settlement period."""

    blocks: tuple[TierBlock, ...]
    settlement: Literal["monthly", "yearly"] = "monthly"
    kind: Literal["tiered"] = "tiered"

    def __post_init__(self) -> None:
        if not self.blocks or self.blocks[-1].up_to_wh is not None:
            raise ValueError("tier blocks must end with an open block (up_to_wh null)")
        bounds = [b.up_to_wh for b in self.blocks[:-1]]
        if any(b is None for b in bounds) or bounds != sorted(set(bounds)):  # type: ignore[type-var]
            raise ValueError("tier block bounds must be strictly increasing")

    def period_key(self, local_day: date) -> str:
        if self.settlement == "monthly":
            return f"{local_day.year:04d}-{local_day.month:02d}"
        return f"{local_day.year:04d}"

    def cost(self, used_before_wh: int, energy_wh: int) -> Fraction:
        """Exact cost of ``energy_wh`` when ``used_before_wh`` was already used this period."""
        total = Fraction(0)
        position, remaining = used_before_wh, energy_wh
        for block in self.blocks:
            if remaining == 0:
                break
            top = block.up_to_wh
            if top is not None and position >= top:
                continue
            room = remaining if top is None else min(remaining, top - position)
            total += energy_cost(room, block.price_per_kwh)
            position += room
            remaining -= room
        return total


Pricing = FlatPricing | TimeOfUsePricing | TieredPricing


@dataclass(frozen=True, slots=True)
class Tariff:
    """Everything that prices a meter's supply. Money in minor units, prices per kWh."""

    currency: str
    energy: Pricing
    standing_charge_per_day: int = 0
    #: share of each top-up that goes to debt, in percent (0..100)
    debt_recovery_percent: int = 0
    #: most recovered from one top-up, minor units; None: no cap beyond the share
    debt_recovery_cap: int | None = None
    timezone: str = "UTC"
    holidays: frozenset[date] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if not (len(self.currency) == 3 and self.currency.isalpha() and self.currency.isupper()):
            raise ValueError(f"currency must be an ISO 4217 code, got {self.currency!r}")
        if self.standing_charge_per_day < 0:
            raise ValueError("standing_charge_per_day must be >= 0")
        if not 0 <= self.debt_recovery_percent <= 100:
            raise ValueError("debt_recovery_percent must be within 0..100")
        if self.debt_recovery_cap is not None and self.debt_recovery_cap < 0:
            raise ValueError("debt_recovery_cap must be >= 0")
        zone(self.timezone)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def day_type(self, local_day: date) -> DayType:
        if local_day in self.holidays:
            return DayType.HOLIDAY
        return DayType.WEEKEND if local_day.weekday() >= 5 else DayType.WEEKDAY

    def debt_recovery(self, top_up: int, debt: int) -> int:
        """What a top-up of ``top_up`` repays of ``debt``: the share, capped, never more
        than the debt. The share is rounded down so the customer is never over-collected."""
        if debt <= 0 or top_up <= 0:
            return 0
        share = top_up * self.debt_recovery_percent // 100
        if self.debt_recovery_cap is not None:
            share = min(share, self.debt_recovery_cap)
        return min(share, debt)


@dataclass(frozen=True, slots=True)
class ScheduledTariff:
    """A tariff in effect from ``activates_at`` (``None``: since enrolment)."""

    activates_at: datetime | None
    tariff: Tariff

    def __post_init__(self) -> None:
        if self.activates_at is not None and self.activates_at.tzinfo is None:
            raise ValueError("activates_at must carry a time zone")


@dataclass(frozen=True, slots=True)
class TariffSchedule:
    """The tariff in effect and the changes scheduled after it, in activation order."""

    entries: tuple[ScheduledTariff, ...]

    def __post_init__(self) -> None:
        if not self.entries or self.entries[0].activates_at is not None:
            raise ValueError("a schedule starts with a tariff in effect (activates_at null)")
        times = [e.activates_at for e in self.entries[1:]]
        if any(t is None for t in times) or times != sorted(times):  # type: ignore[type-var]
            raise ValueError("scheduled tariff changes must be in activation order")

    @classmethod
    def single(cls, tariff: Tariff) -> TariffSchedule:
        return cls((ScheduledTariff(None, tariff),))

    def at(self, instant: datetime) -> Tariff:
        current = self.entries[0].tariff
        for entry in self.entries[1:]:
            assert entry.activates_at is not None
            if entry.activates_at <= instant:
                current = entry.tariff
            else:
                break
        return current

    def with_change(self, tariff: Tariff, activates_at: datetime) -> TariffSchedule:
        """Schedule ``tariff`` from ``activates_at``; later changes already scheduled are
        replaced by it."""
        kept = tuple(
            e for e in self.entries if e.activates_at is None or e.activates_at < activates_at
        )
        return TariffSchedule((*kept, ScheduledTariff(activates_at, tariff)))

    def pruned(self, keep_from: datetime) -> TariffSchedule:
        """Drop tariffs that ended before ``keep_from``; the one in effect then becomes the
        base entry."""
        if len(self.entries) == 1:
            return self
        entries = list(self.entries)
        while len(entries) > 1:
            nxt = entries[1].activates_at
            assert nxt is not None
            if nxt > keep_from:
                break
            entries.pop(0)
        if entries[0].activates_at is not None:
            entries[0] = ScheduledTariff(None, entries[0].tariff)
        if len(entries) == len(self.entries) and entries[0] is self.entries[0]:
            return self
        return TariffSchedule(tuple(entries))

    @property
    def current(self) -> Tariff:
        return self.entries[0].tariff


@dataclass(frozen=True, slots=True)
class TierPosition:
    """Energy already used in the tier settlement period named ``period``."""

    period: str = ""
    used_wh: int = 0


@dataclass(frozen=True, slots=True)
class PricedConsumption:
    cost: Fraction
    tier: TierPosition
    segments: int


def _local_dates(start: datetime, end: datetime, tz: ZoneInfo) -> Iterator[date]:
    day = start.astimezone(tz).date()
    last = end.astimezone(tz).date()
    while day <= last:
        yield day
        day += timedelta(days=1)


@lru_cache(maxsize=4096)
def day_edges(energy: Pricing, timezone: str, day: date) -> tuple[datetime, ...]:
    """The instants of ``day`` (local) where ``energy`` may change its price."""
    if isinstance(energy, FlatPricing):
        return ()
    if isinstance(energy, TimeOfUsePricing):
        wall = {time(0)} | {p.start for p in energy.periods} | {p.end for p in energy.periods}
    elif day.day == 1 and (energy.settlement == "monthly" or day.month == 1):
        wall = {time(0)}
    else:
        return ()
    tz = ZoneInfo(timezone)
    return tuple(sorted(datetime.combine(day, clock, tzinfo=tz) for clock in wall))


def _boundaries(schedule: TariffSchedule, start: datetime, end: datetime) -> list[datetime]:
    """Every instant strictly inside (start, end) where a price may change."""
    edges: set[datetime] = set()
    for entry in schedule.entries:
        if entry.activates_at is not None and start < entry.activates_at < end:
            edges.add(entry.activates_at)
        tariff = entry.tariff
        if isinstance(tariff.energy, FlatPricing):
            continue
        for day in _local_dates(start, end, tariff.tz):
            edges.update(
                t for t in day_edges(tariff.energy, tariff.timezone, day) if start < t < end
            )
    return sorted(edges)


def price_consumption(
    schedule: TariffSchedule,
    start: datetime,
    end: datetime,
    energy_wh: int,
    tier: TierPosition,
) -> PricedConsumption:
    """The exact cost of ``energy_wh`` used between ``start`` and ``end``, split at every
    price boundary by time interpolation. ``tier`` is where the tiered counter stood."""
    if energy_wh < 0:
        raise ValueError("energy must be >= 0")
    points = [end, end] if end <= start else [start, *_boundaries(schedule, start, end), end]
    span = (end - start) // timedelta(microseconds=1)
    total = Fraction(0)
    allotted = 0
    for index in range(1, len(points)):
        seg_start, seg_end = points[index - 1], points[index]
        if index == len(points) - 1 or span <= 0:
            cumulative = energy_wh
        else:
            cumulative = energy_wh * ((seg_end - start) // timedelta(microseconds=1)) // span
        part = cumulative - allotted
        allotted = cumulative
        tariff = schedule.at(seg_start)
        energy = tariff.energy
        middle = seg_start + (seg_end - seg_start) / 2
        local = middle.astimezone(tariff.tz)
        if isinstance(energy, FlatPricing):
            total += energy_cost(part, energy.price_per_kwh)
        elif isinstance(energy, TimeOfUsePricing):
            price = energy.price_at(tariff.day_type(local.date()), local.time())
            total += energy_cost(part, price)
        else:
            key = energy.period_key(local.date())
            used = tier.used_wh if tier.period == key else 0
            total += energy.cost(used, part)
            tier = TierPosition(key, used + part)
    return PricedConsumption(total, tier, len(points) - 1)
