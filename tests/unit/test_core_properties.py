"""Properties over random sequences of readings, top-ups, tariff changes, windows, comm loss and restarts (through the store): money is conserved to the minor unit, no disconnection in a window or for a protected meter, and the relay is commanded closed exactly when the rules say."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.commands import Publish, SetRelay, TopUpDecision
from gateway.core.events import (
    ButtonPressed,
    ClockTick,
    CommunicationLost,
    CommunicationRestored,
    Event,
    ReadingReceived,
    RemoteCommand,
    RemoteKind,
    TariffChanged,
    TopUpAccepted,
)
from gateway.core.meter_state import enrol
from gateway.core.settings import MeterSettings
from gateway.core.states import CreditState
from gateway.core.step import step
from gateway.core.tariff import (
    DayType,
    FlatPricing,
    Tariff,
    TariffSchedule,
    TimeOfUsePricing,
    TouPeriod,
)
from gateway.core.windows import NoDisconnectWindows, WeeklyWindow
from gateway.store import MeterRecord, Store

START = datetime(2026, 11, 2, 6, tzinfo=UTC)


@dataclass(frozen=True)
class Op:
    kind: str
    minutes: int = 0
    value: int = 0


OPS = st.one_of(
    st.builds(Op, st.just("read"), st.integers(1, 600), st.integers(0, 4000)),
    st.builds(Op, st.just("top_up"), st.integers(0, 60), st.integers(1, 6000)),
    st.builds(Op, st.just("tick"), st.integers(1, 3000)),
    st.builds(Op, st.just("button"), st.integers(0, 30)),
    st.builds(Op, st.just("tariff"), st.integers(0, 30), st.integers(0, 500)),
    st.builds(Op, st.just("comm_lost"), st.integers(0, 30)),
    st.builds(Op, st.just("comm_restored"), st.integers(0, 30)),
    st.builds(Op, st.just("protect_on"), st.integers(0, 30)),
    st.builds(Op, st.just("protect_off"), st.integers(0, 30)),
    st.builds(Op, st.just("restart")),
)


def tariff(price: int, standing: int, recovery: int) -> Tariff:
    cheap = TouPeriod(frozenset(DayType), time(0), time(7), Decimal(price) / 3)
    return Tariff(
        "GBP",
        TimeOfUsePricing((cheap,), Decimal(price)) if price % 2 else FlatPricing(Decimal(price)),
        standing_charge_per_day=standing,
        debt_recovery_percent=recovery,
        debt_recovery_cap=1000,
    )


SETTINGS = st.builds(
    lambda price, standing, recovery, overdraft, button, nights, threshold: MeterSettings(
        TariffSchedule.single(tariff(price, standing, recovery)),
        alarm1=1000,
        alarm2=300,
        overdraft_limit=overdraft,
        reconnect_threshold=threshold,
        max_balance=20_000,
        reconnect_needs_button=button,
        windows=NoDisconnectWindows(
            "Europe/London",
            (WeeklyWindow("nights", frozenset(range(7)), time(18), time(8)),) if nights else (),
            frozenset({START.date() + timedelta(days=3)}),
        ),
    ),
    st.integers(1, 400),
    st.integers(0, 200),
    st.integers(0, 100),
    st.integers(0, 800),
    st.booleans(),
    st.booleans(),
    st.integers(0, 500),
)


def event_for(op: Op, now: datetime, register: int, index: int) -> Event:
    match op.kind:
        case "read":
            return ReadingReceived("m", register, now)
        case "top_up":
            return TopUpAccepted("m", op.value, 0, f"t{index}", "online", now)
        case "button":
            return ButtonPressed("m", now)
        case "tariff":
            return TariffChanged("m", tariff(op.value + 1, 30, 50), now, now + timedelta(hours=6))
        case "comm_lost":
            return CommunicationLost("m", now, "timeout")
        case "comm_restored":
            return CommunicationRestored("m", now)
        case "protect_on":
            return RemoteCommand("m", RemoteKind.PROTECT_ON, "winter", now)
        case "protect_off":
            return RemoteCommand("m", RemoteKind.PROTECT_OFF, "spring", now)
    return ClockTick("m", now)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    meter_settings=SETTINGS,
    opening=st.integers(-500, 3000),
    debt=st.integers(0, 2000),
    protected=st.booleans(),
    ops=st.lists(OPS, max_size=40),
)
def test_rules_hold_over_random_sequences(
    meter_settings: MeterSettings, opening: int, debt: int, protected: bool, ops: list[Op]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gw.db"
        store = Store.open(path)
        now = START
        state = enrol(
            "m",
            meter_settings,
            now,
            opening_balance=opening,
            opening_debt=debt,
            protected=protected,
        )
        store.add_meter(MeterRecord("m", "bus", 1, "pe1", b"k" * 16), state, now)
        topups = charged = recovered = 0
        register = 0
        try:
            for index, op in enumerate(ops):
                if op.kind == "restart":
                    store.close()
                    store = Store.open(path)
                    (loaded,) = store.load_meters()
                    assert loaded.state == state
                    continue
                now += timedelta(minutes=op.minutes)
                if op.kind == "read":
                    register += op.value
                before = state
                state, commands = step(state, event_for(op, now, register, index), now)
                store.apply(state, commands, now)
                s = meter_settings
                limit = s.overdraft_limit
                balance = state.ledger.balance
                window = s.windows.active(now)
                # money: what the commands reported adds up to the balance, exactly
                for command in commands:
                    if isinstance(command, TopUpDecision) and command.accepted:
                        topups += command.credited + command.debt_recovered
                        recovered += command.debt_recovered
                    if isinstance(command, Publish) and command.kind == "reading":
                        amount = command.body["charged"]
                        assert isinstance(amount, int)
                        charged += amount
                    if (
                        isinstance(command, Publish)
                        and command.body.get("event") == "standing_charge"
                    ):
                        details = command.body["details"]
                        assert isinstance(details, dict)
                        taken = details["from_balance"]
                        assert isinstance(taken, int)
                        charged += taken
                assert balance == opening + topups - charged - recovered
                assert state.ledger.conserved()
                assert state.ledger.debt >= 0
                assert balance <= max(s.max_balance, before.ledger.balance)
                # disconnection: only for credit, never in a window, protected or comm down
                relays = [c for c in commands if isinstance(c, SetRelay)]
                for relay in relays:
                    if not relay.closed:
                        assert relay.reason.rule in ("credit_exhausted", "relay_readback_mismatch")
                        assert window is None
                        assert before.credit != CreditState.PROTECTED or op.kind == "protect_off"
                        assert state.comm_ok
                        assert balance <= -limit
                # the relay is commanded closed exactly when the rules say so
                closes = [r for r in relays if r.closed]
                assert not (closes and len(closes) != len(relays)), "closed and opened at once"
                assert bool(closes) == (not before.relay_closed and state.relay_closed)
                if closes:
                    by_credit = balance > s.reconnect_threshold and (
                        not s.reconnect_needs_button or op.kind == "button"
                    )
                    assert by_credit or op.kind == "protect_on"
                if state.credit == CreditState.PROTECTED:
                    assert state.relay_closed
                elif balance <= -limit and window is None and state.comm_ok:
                    assert not state.relay_closed
                if not state.relay_closed:
                    assert state.credit in (CreditState.DISCONNECTED, CreditState.RECONNECT_ARMED)
                    if state.credit == CreditState.DISCONNECTED:
                        assert balance <= s.reconnect_threshold
                elif balance <= -limit:
                    assert (
                        window is not None
                        or not state.comm_ok
                        or state.credit == CreditState.PROTECTED
                    )
            rows = store.outbox_since("m", 1)
            assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
            assert store.last_seq("m") == len(rows)
        finally:
            store.close()
