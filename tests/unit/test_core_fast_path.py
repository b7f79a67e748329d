"""The steady-reading fast path of ``step`` gives exactly what the general step gives (state, commands, payload key order), over random tariffs, zones with DST, period edges, relays, flags, credit states and odd readings; and it is taken for the common reading."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.events import Event, ReadingReceived, RemoteCommand, RemoteKind, TopUpAccepted
from gateway.core.meter_state import MeterState, enrol
from gateway.core.money import round_money, round_ratio
from gateway.core.settings import MeterSettings
from gateway.core.steady import steady_day, steady_reading
from gateway.core.step import general_step, step
from gateway.core.tariff import (
    DayType,
    FlatPricing,
    Tariff,
    TariffSchedule,
    TimeOfUsePricing,
    TouPeriod,
)
from gateway.core.windows import NoDisconnectWindows, WeeklyWindow

ZONES = ["UTC", "Europe/London", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]
#: days around the 2026 DST changes of the zones above, and an ordinary one
STARTS = [
    datetime(2026, 3, 28, 20, tzinfo=UTC),
    datetime(2026, 3, 7, 23, tzinfo=UTC),
    datetime(2026, 4, 4, 10, tzinfo=UTC),
    datetime(2026, 10, 24, 22, tzinfo=UTC),
    datetime(2026, 10, 31, 23, 50, tzinfo=UTC),
    datetime(2026, 11, 2, 6, tzinfo=UTC),
]
READ_ZONES = [UTC, UTC, UTC, timezone(timedelta(hours=5, minutes=30)), ZoneInfo("Europe/London")]


@st.composite
def tariffs(draw: st.DrawFn) -> Tariff:
    price = Decimal(draw(st.integers(0, 40_000))) / draw(st.sampled_from([1, 3, 7, 100]))
    zone = draw(st.sampled_from(ZONES))
    if draw(st.booleans()):
        return Tariff("GBP", FlatPricing(price), draw(st.integers(0, 90)), timezone=zone)
    periods = draw(
        st.lists(
            st.builds(
                TouPeriod,
                st.frozensets(st.sampled_from(list(DayType)), min_size=1),
                st.builds(time, st.integers(0, 23), st.sampled_from([0, 30])),
                st.builds(time, st.integers(0, 23), st.sampled_from([15, 45])),
                st.builds(Decimal, st.integers(0, 9999)),
            ),
            max_size=3,
        )
    )
    holidays = frozenset({STARTS[-1].date() + timedelta(days=1)})
    return Tariff(
        "EUR",
        TimeOfUsePricing(tuple(periods), price),
        draw(st.integers(0, 90)),
        timezone=zone,
        holidays=holidays,
    )


@st.composite
def events(draw: st.DrawFn, now: datetime, register: int) -> Event:
    kind = draw(st.sampled_from(["read"] * 8 + ["top_up", "remote"]))
    if kind == "top_up":
        return TopUpAccepted("m", draw(st.integers(1, 5000)), 0, "t", "online", now)
    if kind == "remote":
        return RemoteCommand("m", draw(st.sampled_from(list(RemoteKind))), "test", now)
    read_at = now - timedelta(minutes=draw(st.sampled_from([0, 0, 0, 1, 20])))
    return ReadingReceived(
        "m",
        register,
        read_at.astimezone(draw(st.sampled_from(READ_ZONES))),
        power_w=draw(st.none() | st.integers(0, 9000)),
        relay_closed=draw(st.sampled_from([None, None, True, True, False])),
        cover_open=draw(st.sampled_from([False] * 9 + [True])),
        button_pressed=draw(st.sampled_from([False] * 9 + [True])),
        voltage_v=draw(st.none() | st.floats(200, 250)),
        relay_unreadable=draw(st.sampled_from([False] * 9 + [True])),
        resolution_wh=draw(st.sampled_from([1, 1, 10, 100])),
        measured=draw(st.sampled_from([(), (("current_a", 3.5), ("frequency_hz", 50.0))])),
    )


def assert_same(state: MeterState, event: Event, now: datetime) -> MeterState:
    fast_state, fast_commands = step(state, event, now)
    general_state, general_commands = general_step(state, event, now)
    assert fast_state == general_state
    assert repr(fast_state) == repr(general_state)
    assert fast_commands == general_commands
    assert repr(fast_commands) == repr(general_commands)  # payload keys in the same order
    return general_state


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tariff=tariffs(),
    start=st.sampled_from(STARTS),
    opening=st.integers(-600, 3000),
    windows=st.booleans(),
    button=st.booleans(),
    data=st.data(),
)
def test_fast_path_equals_the_general_step(  # noqa: PLR0917
    tariff: Tariff,
    start: datetime,
    opening: int,
    windows: bool,
    button: bool,
    data: st.DataObject,
) -> None:
    nights = (WeeklyWindow("nights", frozenset(range(7)), time(18), time(8)),) if windows else ()
    meter_settings = MeterSettings(
        TariffSchedule.single(tariff),
        alarm1=1000,
        alarm2=300,
        overdraft_limit=400,
        reconnect_threshold=100,
        max_balance=50_000,
        reconnect_needs_button=button,
        rated_power_w=9000,
        register_width_bits=16,
        windows=NoDisconnectWindows("Europe/London", nights),
    )
    state = enrol("m", meter_settings, start, opening_balance=opening)
    now, register = start, 100
    for _ in range(data.draw(st.integers(1, 30))):
        now += timedelta(minutes=data.draw(st.sampled_from([1, 7, 15, 15, 15, 60, 250])))
        register += data.draw(st.sampled_from([0, 1, 37, 180, 900, 3000, 70_000, -5]))
        register %= 1 << 16
        state = assert_same(state, data.draw(events(now, register)), now)


def test_the_common_reading_takes_the_fast_path() -> None:
    night = TouPeriod(frozenset(DayType), time(0), time(7), Decimal("12.5"))
    tariff = Tariff("GBP", TimeOfUsePricing((night,), Decimal("28.34")), 53)
    start = datetime(2026, 11, 2, tzinfo=UTC)
    state = enrol("m", MeterSettings(TariffSchedule.single(tariff)), start, opening_balance=5000)
    general = []
    for quarter in range(100):
        now = start + timedelta(minutes=10 + 15 * quarter)
        reading = ReadingReceived("m", 211 * quarter, now, power_w=800, relay_closed=True)
        if steady_reading(state, reading, now) is None:
            general.append(now.strftime("%d %H:%M"))
        state = assert_same(state, reading, now)
    # the baseline, the one across 07:00, the first of the next day (midnight, standing charge)
    assert general == ["02 00:10", "02 07:10", "03 00:10"]


def test_steady_day_refuses_a_dst_change_day() -> None:
    tariff = Tariff("GBP", FlatPricing(Decimal(10)), timezone="Europe/London")
    assert steady_day(tariff, datetime(2026, 3, 29, 12, tzinfo=UTC)) is None
    day = steady_day(tariff, datetime(2026, 3, 30, 12, tzinfo=UTC))
    assert day is not None
    assert day.begin == datetime(2026, 3, 29, 23, tzinfo=UTC)


@given(st.integers(-(10**12), 10**12), st.integers(1, 10**9))
def test_round_ratio_is_round_money(numerator: int, denominator: int) -> None:
    assert round_ratio(numerator, denominator) == round_money(Fraction(numerator, denominator))
