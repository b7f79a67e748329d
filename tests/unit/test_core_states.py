"""Every transition of the credit state table, reached through the driver, and the generated diagram in the docs matches the table."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.core.commands import Publish, SetRelay
from gateway.core.events import ClockTick, Event, RemoteCommand, RemoteKind, TopUpAccepted
from gateway.core.meter_state import MeterState, enrol
from gateway.core.settings import MeterSettings
from gateway.core.states import RELAY_OPEN_STATES, TRANSITIONS, CreditState, Trigger
from gateway.core.step import step
from gateway.core.tariff import FlatPricing, Tariff, TariffSchedule
from gateway.core.windows import NoDisconnectWindows, WeeklyWindow

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 2, 12, tzinfo=UTC)  # a Monday, noon
# Monday 00:00 to Tuesday 00:00 is a no-disconnect window; at NOW we are inside it
WINDOW = NoDisconnectWindows("UTC", (WeeklyWindow("monday", frozenset({0}), time(0), time(0)),))
LEVEL_BALANCE = {
    Trigger.CREDIT_NORMAL: 1000,
    Trigger.CREDIT_LOW: 400,
    Trigger.CREDIT_VERY_LOW: 100,
    Trigger.CREDIT_EMERGENCY: -100,
    Trigger.CREDIT_EXHAUSTED: -600,
}
REMOTE = {
    Trigger.REMOTE_DISCONNECT: RemoteKind.DISCONNECT,
    Trigger.REMOTE_RECONNECT: RemoteKind.RECONNECT,
    Trigger.PROTECT_ON: RemoteKind.PROTECT_ON,
    Trigger.PROTECT_OFF: RemoteKind.PROTECT_OFF,
}


def settings(*, button: bool = False, window: bool = True) -> MeterSettings:
    return MeterSettings(
        TariffSchedule.single(Tariff("GBP", FlatPricing(Decimal(20)))),
        alarm1=500,
        alarm2=200,
        overdraft_limit=500,
        reconnect_threshold=100,
        reconnect_needs_button=button,
        windows=WINDOW if window else NoDisconnectWindows(),
    )


def meter(credit: CreditState, balance: int, **kw: bool) -> MeterState:
    state = enrol("m1", settings(**kw), NOW - timedelta(hours=1))
    ledger = replace(state.ledger, balance=balance, opening_balance=balance)
    return replace(state, credit=credit, ledger=ledger)


def situation(source: CreditState, trigger: Trigger) -> tuple[MeterState, Event]:
    """A meter in ``source`` and the event that raises ``trigger`` for it."""
    if trigger in LEVEL_BALANCE:
        balance = LEVEL_BALANCE[trigger]
        return meter(source, balance), ClockTick("m1", NOW)
    if trigger == Trigger.DISCONNECT_DUE:
        return meter(source, -600, window=False), ClockTick("m1", NOW)
    if trigger in (Trigger.RECONNECT_ALLOWED, Trigger.RECONNECT_ARM):
        state = meter(source, -600, button=trigger == Trigger.RECONNECT_ARM)
        return state, TopUpAccepted("m1", 2000, 1, "tok-1", "keypad", NOW)
    if trigger == Trigger.BUTTON_PRESSED:
        from gateway.core.events import ButtonPressed  # noqa: PLC0415

        return meter(source, 1000, button=True), ButtonPressed("m1", NOW)
    balance = 1000
    if source == CreditState.LOW:
        balance = LEVEL_BALANCE[Trigger.CREDIT_LOW]
    elif source == CreditState.VERY_LOW:
        balance = LEVEL_BALANCE[Trigger.CREDIT_VERY_LOW]
    elif source == CreditState.EMERGENCY:
        balance = LEVEL_BALANCE[Trigger.CREDIT_EMERGENCY]
    elif source == CreditState.EXHAUSTED:
        balance = LEVEL_BALANCE[Trigger.CREDIT_EXHAUSTED]
    return meter(source, balance), RemoteCommand("m1", REMOTE[trigger], "test", NOW, "req-1")


TABLE = [(s, t, target) for s, row in TRANSITIONS.items() for t, target in row.items()]


@pytest.mark.parametrize(("source", "trigger", "target"), TABLE, ids=str)
def test_every_transition_in_the_table(
    source: CreditState, trigger: Trigger, target: CreditState
) -> None:
    state, event = situation(source, trigger)
    _, commands = step(state, event, NOW)
    changes = [
        c.body["details"]
        for c in commands
        if isinstance(c, Publish) and c.body.get("event") == "credit_state_changed"
    ]
    assert changes, f"no transition from {source} on {trigger}"
    first = changes[0]
    assert isinstance(first, dict)
    assert (first["from"], first["trigger"], first["to"]) == (source, trigger, target)
    relays = [c for c in commands if isinstance(c, SetRelay)]
    if (source in RELAY_OPEN_STATES) != (target in RELAY_OPEN_STATES) and len(changes) == 1:
        assert [r.closed for r in relays] == [target not in RELAY_OPEN_STATES]
        assert relays[0].reason.rule


def test_a_credit_disconnection_only_comes_from_exhausted() -> None:
    sources = [s for s, row in TRANSITIONS.items() if CreditState.DISCONNECTED in row.values()]
    assert set(sources) == {CreditState.EXHAUSTED, CreditState.RECONNECT_ARMED}
    assert TRANSITIONS[CreditState.EXHAUSTED][Trigger.DISCONNECT_DUE] == CreditState.DISCONNECTED


def test_protected_has_no_way_out_but_protect_off() -> None:
    assert TRANSITIONS[CreditState.PROTECTED] == {Trigger.PROTECT_OFF: CreditState.NORMAL}


def test_every_state_has_a_row() -> None:
    assert set(TRANSITIONS) == set(CreditState)


def test_the_diagram_in_the_docs_is_generated_from_the_table() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_credit_states.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
