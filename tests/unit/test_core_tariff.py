"""Tariffs as data: flat, time of use and tiered pricing, boundary splitting by time, scheduled changes, and the JSON form's validation."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter

from gateway.core.settings import MeterSettings
from gateway.core.tariff import (
    DayType,
    FlatPricing,
    Tariff,
    TariffSchedule,
    TierBlock,
    TieredPricing,
    TierPosition,
    TimeOfUsePricing,
    TouPeriod,
    price_consumption,
)
from gateway.core.windows import NoDisconnectWindows, WeeklyWindow
from gateway.forms import (
    SettingsError,
    settings_from_json,
    settings_to_json,
    tariff_from_json,
)

MONDAY = datetime(2026, 11, 2, tzinfo=UTC)
_TARIFF = TypeAdapter(Tariff)


def tariff_to_json(tariff: Tariff) -> object:
    """A tariff as a headend sends one (the gateway only reads tariffs, so only tests write them)."""
    return _TARIFF.dump_python(tariff, mode="json")


EVERY_DAY = frozenset(DayType)


def flat(price: str, **kw: Any) -> Tariff:
    return Tariff("GBP", FlatPricing(Decimal(price)), **kw)


def night_tou() -> Tariff:
    """10 per kWh from 00:00 to 07:00 on every day type, 30 otherwise."""
    night = TouPeriod(EVERY_DAY, time(0), time(7), Decimal(10))
    return Tariff("GBP", TimeOfUsePricing((night,), Decimal(30)))


def test_flat_price_whatever_the_interval() -> None:
    schedule = TariffSchedule.single(flat("25"))
    priced = price_consumption(schedule, MONDAY, MONDAY + timedelta(days=3), 4000, TierPosition())
    assert priced.cost == 100


def test_tou_delta_spanning_a_boundary_is_split_by_time() -> None:
    schedule = TariffSchedule.single(night_tou())
    start = MONDAY + timedelta(hours=6)  # 06:00 to 08:00: half at 10, half at 30
    priced = price_consumption(schedule, start, start + timedelta(hours=2), 2000, TierPosition())
    assert priced.cost == 10 + 30
    assert priced.segments == 2


def test_tou_split_keeps_whole_wh_and_the_total() -> None:
    schedule = TariffSchedule.single(night_tou())
    start = MONDAY + timedelta(hours=6)  # one third before 07:00
    priced = price_consumption(schedule, start, start + timedelta(hours=3), 1001, TierPosition())
    assert priced.cost == Fraction(333 * 10 + 668 * 30, 1000)


def test_tou_day_types_weekend_and_holiday() -> None:
    weekend = TouPeriod(
        frozenset({DayType.WEEKEND, DayType.HOLIDAY}), time(0), time(0, 1), Decimal(1)
    )
    holiday = date(2026, 11, 4)
    tariff = Tariff(
        "GBP",
        TimeOfUsePricing((weekend,), Decimal(20)),
        holidays=frozenset({holiday}),
    )
    # a period whose start > end would wrap; here 00:00-00:01 is just a minute
    assert tariff.day_type(date(2026, 11, 7)) == DayType.WEEKEND
    assert tariff.day_type(holiday) == DayType.HOLIDAY
    assert tariff.day_type(date(2026, 11, 2)) == DayType.WEEKDAY


def test_tou_period_wrapping_midnight() -> None:
    period = TouPeriod(EVERY_DAY, time(22), time(6), Decimal(5))
    assert period.covers(DayType.WEEKDAY, time(23))
    assert period.covers(DayType.WEEKDAY, time(5, 59))
    assert not period.covers(DayType.WEEKDAY, time(6))


def tiered(settlement: str = "monthly") -> Tariff:
    blocks = (
        TierBlock(1000, Decimal(10)),
        TierBlock(2000, Decimal(20)),
        TierBlock(None, Decimal(40)),
    )
    return Tariff("GBP", TieredPricing(blocks, settlement))  # type: ignore[arg-type]


def test_tiered_blocks_within_one_delta() -> None:
    schedule = TariffSchedule.single(tiered())
    priced = price_consumption(schedule, MONDAY, MONDAY + timedelta(hours=1), 2500, TierPosition())
    assert priced.cost == 10 + 20 + 20  # 1 kWh at 10, 1 kWh at 20, 0.5 kWh at 40
    assert priced.tier == TierPosition("2026-11", 2500)


def test_tiered_continues_from_usage_so_far() -> None:
    schedule = TariffSchedule.single(tiered())
    priced = price_consumption(
        schedule, MONDAY, MONDAY + timedelta(hours=1), 500, TierPosition("2026-11", 1800)
    )
    assert priced.cost == Fraction(200 * 20 + 300 * 40, 1000)


def test_tiered_monthly_settlement_resets_at_the_month_boundary() -> None:
    schedule = TariffSchedule.single(tiered())
    start = datetime(2026, 11, 30, 23, tzinfo=UTC)
    priced = price_consumption(
        schedule, start, start + timedelta(hours=2), 2000, TierPosition("2026-11", 5000)
    )
    # the first hour finishes November in the top block; December starts again at block 1
    assert priced.cost == 40 + 10
    assert priced.tier == TierPosition("2026-12", 1000)


def test_tiered_yearly_settlement_does_not_reset_monthly() -> None:
    schedule = TariffSchedule.single(tiered("yearly"))
    start = datetime(2026, 11, 30, 23, tzinfo=UTC)
    priced = price_consumption(
        schedule, start, start + timedelta(hours=2), 1000, TierPosition("2026", 5000)
    )
    assert priced.cost == 40
    assert priced.tier == TierPosition("2026", 6000)


def test_scheduled_change_splits_the_delta_at_activation() -> None:
    activation = MONDAY + timedelta(hours=1)
    schedule = TariffSchedule.single(flat("10")).with_change(flat("50"), activation)
    priced = price_consumption(schedule, MONDAY, MONDAY + timedelta(hours=2), 2000, TierPosition())
    assert priced.cost == 10 + 50
    assert schedule.at(activation - timedelta(seconds=1)).energy == FlatPricing(Decimal(10))
    assert schedule.at(activation).energy == FlatPricing(Decimal(50))


def test_schedule_prunes_what_ended_and_replaces_later_changes() -> None:
    a, b = MONDAY + timedelta(hours=1), MONDAY + timedelta(hours=2)
    schedule = TariffSchedule.single(flat("10")).with_change(flat("20"), b)
    schedule = schedule.with_change(flat("30"), a)  # replaces the later change
    assert len(schedule.entries) == 2
    pruned = schedule.pruned(a + timedelta(minutes=1))
    assert pruned.entries[0].activates_at is None
    assert pruned.current == flat("30")


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"currency": "pounds"}, "currency"),
        ({"standing_charge_per_day": -1}, "standing_charge"),
        ({"debt_recovery_percent": 101}, "debt_recovery_percent"),
        ({"timezone": "Mars/Olympus"}, "time zone"),
    ],
)
def test_bad_tariffs_are_refused(kwargs: dict[str, Any], problem: str) -> None:
    base: dict[str, Any] = {"currency": "GBP", "energy": FlatPricing(Decimal(1))}
    with pytest.raises(ValueError, match=problem):
        Tariff(**{**base, **kwargs})


def test_bad_tier_blocks_are_refused() -> None:
    with pytest.raises(ValueError, match="open block"):
        TieredPricing((TierBlock(10, Decimal(1)),))
    with pytest.raises(ValueError, match="increasing"):
        TieredPricing(
            (TierBlock(10, Decimal(1)), TierBlock(5, Decimal(1)), TierBlock(None, Decimal(1)))
        )
    with pytest.raises(ValueError, match="price"):
        FlatPricing(Decimal("-1"))
    with pytest.raises(ValueError, match="price"):
        FlatPricing(Decimal("NaN"))


def test_tariff_json_round_trip() -> None:
    for tariff in (flat("28.34", standing_charge_per_day=53), night_tou(), tiered()):
        data = tariff_to_json(tariff)
        assert tariff_from_json(data) == tariff


def test_tariff_json_example_from_a_headend() -> None:
    tariff = tariff_from_json(
        {
            "currency": "KES",
            "energy": {
                "kind": "tou",
                "default_price_per_kwh": "2500",
                "periods": [
                    {
                        "day_types": ["weekday"],
                        "start": "22:00",
                        "end": "06:00",
                        "price_per_kwh": "1200.5",
                    }
                ],
            },
            "standing_charge_per_day": 1000,
            "debt_recovery_percent": 30,
            "debt_recovery_cap": 50000,
            "timezone": "Africa/Nairobi",
            "holidays": ["2026-12-25"],
        }
    )
    assert isinstance(tariff.energy, TimeOfUsePricing)
    assert tariff.energy.periods[0].price_per_kwh == Decimal("1200.5")


def test_settings_json_round_trip() -> None:
    settings = MeterSettings(
        TariffSchedule.single(night_tou()).with_change(tiered(), MONDAY),
        reconnect_needs_button=True,
        windows=NoDisconnectWindows(
            "Europe/London",
            (WeeklyWindow("evenings", frozenset(range(6)), time(18), time(11)),),
            frozenset({date(2026, 12, 25)}),
        ),
    )
    assert settings_from_json(settings_to_json(settings)) == settings


@pytest.mark.parametrize(
    "document",
    [
        None,
        [],
        {},
        {"currency": "GBP"},
        {"currency": "GBP", "energy": {"kind": "nuclear", "price_per_kwh": "1"}},
        {"currency": "GBP", "energy": {"kind": "flat", "price_per_kwh": "-1"}},
        {"currency": "GBP", "energy": {"kind": "flat", "price_per_kwh": "1"}, "timezone": "X/Y"},
    ],
)
def test_bad_tariff_documents_get_a_typed_rejection(document: object) -> None:
    with pytest.raises(SettingsError):
        tariff_from_json(document)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.floats(allow_nan=False),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "currency": st.sampled_from(["GBP", "gbp", "", "EURO"]) | JSONISH,
            "energy": JSONISH
            | st.fixed_dictionaries(
                {"kind": st.sampled_from(["flat", "tou", "tiered"])},
                optional={"price_per_kwh": JSONISH, "blocks": JSONISH, "periods": JSONISH},
            ),
            "standing_charge_per_day": JSONISH,
            "timezone": JSONISH,
            "holidays": JSONISH,
        },
    )
)
def test_tariff_parser_either_returns_a_valid_tariff_or_a_typed_error(document: object) -> None:
    try:
        tariff = tariff_from_json(document)
    except SettingsError:
        return
    assert tariff_from_json(tariff_to_json(tariff)) == tariff


VALID_SETTINGS = settings_to_json(
    MeterSettings(TariffSchedule.single(night_tou()), windows=NoDisconnectWindows("Europe/London"))
)


@given(
    key=st.sampled_from(sorted(VALID_SETTINGS)),
    value=JSONISH | st.integers(-(10**6), 10**6),
)
def test_settings_parser_rejects_bad_fields_with_a_typed_error(key: str, value: object) -> None:
    document = {**VALID_SETTINGS, key: value}
    try:
        parsed = settings_from_json(document)
    except SettingsError:
        return
    assert settings_from_json(settings_to_json(parsed)) == parsed
    assert parsed.alarm1 > parsed.alarm2 > 0
