"""A no-disconnect window lets the balance fall only to its debt cap: below -(overdraft_limit + window_debt_cap) the meter is disconnected inside the window too, and the event names the window and the cap; above it the window still holds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pytest

from gateway.core.commands import Publish, SetRelay
from gateway.core.events import ReadingReceived
from gateway.core.lease import lease_allowance_wh
from gateway.core.meter_state import MeterState, enrol
from gateway.core.settings import MeterSettings
from gateway.core.states import CreditState
from gateway.core.step import step
from gateway.core.tariff import FlatPricing, Tariff, TariffSchedule
from gateway.core.windows import NoDisconnectWindows, WeeklyWindow

NOW = datetime(2026, 11, 2, 12, tzinfo=UTC)  # a Monday, noon: inside the window
WINDOW = NoDisconnectWindows("UTC", (WeeklyWindow("monday", frozenset({0}), time(0), time(0)),))


def meter(window_debt_cap: int = 2_000) -> MeterState:
    settings = MeterSettings(
        TariffSchedule.single(Tariff("KES", FlatPricing(Decimal(100)))),
        overdraft_limit=0,
        reconnect_threshold=50,
        windows=WINDOW,
        rated_power_w=100_000,
        window_debt_cap=window_debt_cap,
    )
    state = enrol("m1", settings, NOW - timedelta(hours=2), opening_balance=100)
    state, _ = step(state, ReadingReceived("m1", 0, NOW - timedelta(hours=1)), NOW)
    return state


def events(commands: Sequence[object]) -> dict[str, Any]:
    return {
        str(c.body["event"]): c.body
        for c in commands
        if isinstance(c, Publish) and c.kind == "event"
    }


def test_the_default_cap_holds_debt_inside_a_window() -> None:
    state = meter()
    assert state.settings.window_debt_cap == 2_000
    # 19 kWh at 100 a kWh: balance 100 - 1,900 = -1,800, inside the cap: supply stays on
    at = NOW - timedelta(minutes=30)
    state, commands = step(state, ReadingReceived("m1", 19_000, at), at)
    assert state.credit is CreditState.EXHAUSTED
    assert not any(isinstance(c, SetRelay) for c in commands)
    # 2 kWh more: -2,000 reaches the cap: disconnected inside the window
    state, commands = step(state, ReadingReceived("m1", 21_000, NOW), NOW)
    assert state.ledger.balance == -2_000
    assert state.credit is CreditState.DISCONNECTED
    assert [c.closed for c in commands if isinstance(c, SetRelay)] == [False]
    found = events(commands)
    assert found["window_debt_cap"]["details"] == {
        "window": "monday",
        "cap": 2_000,
        "floor": -2_000,
        "balance": -2_000,
    }
    decision = found["relay_opened"]["details"]["decision"]
    assert decision["rule"] == "window_debt_cap"
    assert decision["window"] == "monday"


def test_the_cap_is_a_setting_counted_below_the_overdraft() -> None:
    state = meter(window_debt_cap=10_000)
    state, _ = step(state, ReadingReceived("m1", 29_000, NOW), NOW)
    assert state.ledger.balance == -2_800
    assert state.credit is CreditState.EXHAUSTED  # the window holds: far from -10,000
    with pytest.raises(ValueError, match="window_debt_cap"):
        MeterSettings(TariffSchedule.single(Tariff("KES", FlatPricing(Decimal(1)))),
                      window_debt_cap=-1)  # fmt: skip


def test_the_credit_lease_inside_a_window_stops_at_the_cap() -> None:
    """A meter the gateway cannot reach may not run further into debt than the cap
    either: its lease covers the rest of the window only up to what the cap buys."""
    state = meter()  # balance 100, overdraft 0, cap 2,000 at 100 a kWh
    grace = lease_allowance_wh(replace(state, settings=replace(state.settings,
                                       windows=NoDisconnectWindows())), NOW, 0)  # fmt: skip
    assert grace is not None
    inside = lease_allowance_wh(state, NOW, 0)
    assert inside == grace + 20_000  # 2,000 minor units of debt buy 20 kWh, not 12 h at 100 kW
