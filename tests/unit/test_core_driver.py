"""The per-meter driver's rules: charging from register deltas, windows, protection, communication errors, reconnection, maximum balance, tamper and bypass, standing charge and debt, tariff changes, forecast."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from gateway.core.commands import (
    Command,
    DisplayCode,
    Publish,
    SetAlarm,
    SetRelay,
    TopUpDecision,
    WriteDisplay,
)
from gateway.core.events import (
    ButtonPressed,
    ClockTick,
    CommunicationLost,
    CommunicationRestored,
    Event,
    PollFailed,
    ReadingReceived,
    RelayObserved,
    RemoteCommand,
    RemoteKind,
    TariffChanged,
    TopUpAccepted,
)
from gateway.core.meter_state import MeterState, enrol, forecast, next_deadline
from gateway.core.settings import MeterSettings
from gateway.core.states import CreditState
from gateway.core.step import step
from gateway.core.tariff import FlatPricing, Tariff, TariffSchedule
from gateway.core.windows import NoDisconnectWindows, WeeklyWindow

MONDAY = datetime(2026, 11, 2, 12, tzinfo=UTC)
# every day from 18:00 to 08:00 next morning: no credit disconnection
NIGHTS = NoDisconnectWindows(
    "UTC", (WeeklyWindow("nights", frozenset(range(7)), time(18), time(8)),)
)


def tariff(price: str = "100", standing: int = 0, recovery: int = 0) -> Tariff:
    return Tariff(
        "GBP",
        FlatPricing(Decimal(price)),
        standing_charge_per_day=standing,
        debt_recovery_percent=recovery,
    )


def new_meter(balance: int = 1000, *, protected: bool = False, **kw: object) -> MeterState:
    options: dict[str, object] = {"tariffs": TariffSchedule.single(tariff()), "windows": NIGHTS}
    options.update(kw)
    settings = MeterSettings(**options)  # type: ignore[arg-type]
    state = enrol(
        "m1", settings, MONDAY - timedelta(hours=1), opening_balance=balance, protected=protected
    )
    state, _ = step(state, ReadingReceived("m1", 10_000, MONDAY - timedelta(hours=1)), MONDAY)
    return state


class Run:
    """A meter and the commands of its last step."""

    def __init__(self, state: MeterState) -> None:
        self.state = state
        self.commands: list[Command] = []

    def __call__(self, event: Event) -> list[Command]:
        now = event.read_at if isinstance(event, ReadingReceived) else event.at
        self.state, self.commands = step(self.state, event, now)
        assert self.state.ledger.conserved()
        return self.commands

    def read(self, wh: int, at: datetime, **flags: Any) -> list[Command]:
        return self(ReadingReceived("m1", wh, at, **flags))

    def events(self) -> list[str]:
        return [
            str(c.body["event"])
            for c in self.commands
            if isinstance(c, Publish) and c.kind == "event"
        ]

    def credit(self) -> CreditState:
        return self.state.credit

    def relays(self) -> list[bool]:
        return [c.closed for c in self.commands if isinstance(c, SetRelay)]


def test_first_reading_is_only_the_baseline() -> None:
    settings = MeterSettings(TariffSchedule.single(tariff()))
    state = enrol("m1", settings, MONDAY, opening_balance=1000)
    state, commands = step(state, ReadingReceived("m1", 987_654, MONDAY), MONDAY)
    assert state.ledger.balance == 1000
    assert state.ledger.register_wh == 987_654
    reading = next(c for c in commands if isinstance(c, Publish) and c.kind == "reading")
    assert reading.body["charged"] == 0


def test_consumption_is_charged_from_register_deltas_never_power() -> None:
    run = Run(new_meter())
    run(ReadingReceived("m1", 11_000, MONDAY, power_w=50_000))  # 1 kWh at 100
    assert run.state.ledger.balance == 900
    run(ReadingReceived("m1", 11_000, MONDAY + timedelta(hours=1), power_w=9_000))
    assert run.state.ledger.balance == 900


def test_missed_polls_charge_one_large_delta() -> None:
    run = Run(new_meter(balance=5000))
    run(PollFailed("m1", "timeout", MONDAY))
    assert run.commands == []
    run.read(30_000, MONDAY + timedelta(hours=5))  # 20 kWh in 6 h: plausible at 23 kW
    assert run.state.ledger.balance == 3000


def test_register_backwards_is_an_event_with_no_refund_and_a_new_baseline() -> None:
    run = Run(new_meter())
    run.read(500, MONDAY)
    assert "register_backwards" in run.events()
    assert run.state.ledger.balance == 1000
    run.read(1500, MONDAY + timedelta(hours=1))
    assert run.state.ledger.balance == 900


def test_implausible_jump_is_held_not_charged() -> None:
    run = Run(new_meter())
    run.read(10_000 + 100_000, MONDAY)  # 100 kWh in an hour from a 23 kW meter
    assert "energy_held" in run.events()
    assert run.state.ledger.balance == 1000
    assert run.state.ledger.held_wh == 100_000
    run.read(111_000, MONDAY + timedelta(hours=1))  # charging resumes from there
    assert run.state.ledger.balance == 900


def test_u32_rollover_is_charged() -> None:
    state = new_meter(register_width_bits=32)
    state = replace(state, ledger=replace(state.ledger, register_wh=(1 << 32) - 500))
    run = Run(state)
    run.read(500, MONDAY)
    assert "register_rollover" in run.events()
    assert run.state.ledger.balance == 900


def test_exhausted_inside_a_window_stays_on_and_is_still_charged() -> None:
    run = Run(new_meter(balance=100, overdraft_limit=0))
    evening = MONDAY.replace(hour=19)
    run.read(12_000, evening)  # 2 kWh at 100: balance -100, inside the night window
    assert run.credit() == CreditState.EXHAUSTED
    assert run.relays() == []
    assert run.state.ledger.balance == -100
    run.read(13_000, evening + timedelta(hours=2))
    assert run.relays() == []
    assert run.state.ledger.balance == -200
    run(ClockTick("m1", MONDAY.replace(hour=8) + timedelta(days=1)))  # the window ends
    assert run.relays() == [False]
    relay = next(c for c in run.commands if isinstance(c, SetRelay))
    assert relay.reason.rule == "credit_exhausted"
    assert relay.reason.balance == -200
    assert run.credit() == CreditState.DISCONNECTED


def test_exhaustion_in_a_window_names_the_window() -> None:
    run = Run(new_meter(balance=100, overdraft_limit=0))
    run.read(12_000, MONDAY.replace(hour=19))
    change = next(
        c
        for c in run.commands
        if isinstance(c, Publish) and c.body.get("event") == "credit_state_changed"
    )
    details = change.body["details"]
    assert isinstance(details, dict)
    decision = details["decision"]
    assert isinstance(decision, dict)
    assert decision["window"] == "nights"


def test_protected_meter_is_never_disconnected_but_charged() -> None:
    run = Run(new_meter(balance=0, protected=True))
    run.read(50_000, MONDAY + timedelta(hours=3))
    assert run.relays() == []
    assert run.credit() == CreditState.PROTECTED
    assert run.state.ledger.balance == -4000
    run(RemoteCommand("m1", RemoteKind.DISCONNECT, "vacant", MONDAY + timedelta(hours=3)))
    assert run.relays() == []
    assert "remote_command_ignored" in run.events()
    run(RemoteCommand("m1", RemoteKind.PROTECT_OFF, "winter over", MONDAY + timedelta(hours=4)))
    assert run.relays() == [False]  # outside the window, exhausted: now it trips


def test_never_disconnect_because_of_a_communication_error() -> None:
    run = Run(new_meter(balance=100, overdraft_limit=0, windows=NoDisconnectWindows()))
    run(CommunicationLost("m1", MONDAY, "timeout"))
    run(ClockTick("m1", MONDAY + timedelta(days=3)))  # standing charges, no readings
    for _ in range(3):
        run(PollFailed("m1", "timeout", MONDAY + timedelta(days=3)))
        assert run.relays() == []
    run.read(12_000, MONDAY + timedelta(days=3, hours=1))
    assert run.credit() == CreditState.EXHAUSTED
    assert run.relays() == []
    run(CommunicationRestored("m1", MONDAY + timedelta(days=3, hours=1)))
    assert run.relays() == [False]


def exhausted_and_off(**kw: Any) -> Run:
    run = Run(new_meter(balance=100, overdraft_limit=0, windows=NoDisconnectWindows(), **kw))
    run.read(12_000, MONDAY)
    assert run.relays() == [False]
    return run


def test_top_up_above_reconnect_threshold_closes_the_relay() -> None:
    run = exhausted_and_off(reconnect_threshold=500)
    run(TopUpAccepted("m1", 550, 1, "t1", "keypad", MONDAY))  # balance 450: not enough
    assert run.relays() == []
    assert run.credit() == CreditState.DISCONNECTED
    run(TopUpAccepted("m1", 100, 2, "t2", "online", MONDAY))  # balance 550
    assert run.relays() == [True]
    relay = next(c for c in run.commands if isinstance(c, SetRelay))
    assert relay.reason.rule == "credit_restored"
    assert run.credit() == CreditState.NORMAL


def test_reconnect_waits_for_the_button_when_configured() -> None:
    run = exhausted_and_off(reconnect_needs_button=True)
    run(TopUpAccepted("m1", 2000, 1, "t1", "keypad", MONDAY))
    assert run.relays() == []
    assert run.credit() == CreditState.RECONNECT_ARMED
    assert any(
        isinstance(c, WriteDisplay) and c.code == DisplayCode.TOKEN_ACCEPTED for c in run.commands
    )
    run(ButtonPressed("m1", MONDAY + timedelta(minutes=1)))
    assert run.relays() == [True]
    assert run.credit() == CreditState.NORMAL


def test_button_in_a_reading_counts_as_a_press() -> None:
    run = exhausted_and_off(reconnect_needs_button=True)
    run(TopUpAccepted("m1", 2000, 1, "t1", "keypad", MONDAY))
    run.read(12_000, MONDAY + timedelta(minutes=5), button_pressed=True)
    assert run.relays() == [True]


def test_top_up_over_the_maximum_balance_is_rejected_whole() -> None:
    run = Run(new_meter(balance=9000, max_balance=10_000))
    run(TopUpAccepted("m1", 1001, 1, "t1", "keypad", MONDAY))
    decision = next(c for c in run.commands if isinstance(c, TopUpDecision))
    assert (decision.accepted, decision.reason) == (False, "over_max_balance")
    assert run.state.ledger.balance == 9000
    assert run.state.ledger.topups == 0
    run(TopUpAccepted("m1", 1000, 1, "t1", "keypad", MONDAY))
    assert run.state.ledger.balance == 10_000


def test_bypass_consumption_while_open_is_an_event_and_charged() -> None:
    run = exhausted_and_off()
    run.read(12_000, MONDAY + timedelta(minutes=30), relay_closed=False)
    assert "tamper" not in run.events()
    run.read(13_000, MONDAY + timedelta(hours=1), relay_closed=False)
    assert "tamper" in run.events()
    assert run.state.ledger.balance == -200


def test_energy_used_before_the_cut_off_is_not_bypass() -> None:
    run = exhausted_and_off()
    # The first reading after the relay opened still holds the energy used between the
    # exhausting reading and the moment the relay opened: charged, but no tamper.
    run.read(12_050, MONDAY + timedelta(minutes=1), relay_closed=False)
    assert "tamper" not in run.events()
    run.read(12_050, MONDAY + timedelta(minutes=2), relay_closed=False)
    assert "tamper" not in run.events()


def test_tamper_and_load_limit_raise_events_on_the_rising_edge() -> None:
    run = Run(new_meter())
    run.read(10_000, MONDAY, cover_open=True, load_limit_tripped=True)
    assert run.events().count("tamper") == 1
    assert run.events().count("load_limit") == 1
    run.read(10_000, MONDAY + timedelta(minutes=1), cover_open=True)
    assert "tamper" not in run.events()


def test_relay_readback_mismatch_is_reported_and_corrected() -> None:
    run = Run(new_meter())
    run(RelayObserved("m1", False, MONDAY))
    assert "relay_mismatch" in run.events()
    assert run.relays() == [True]


def test_standing_charge_accrues_daily_while_off_and_becomes_debt() -> None:
    schedule = TariffSchedule.single(tariff(standing=30, recovery=50))
    run = exhausted_and_off(tariffs=schedule)
    balance = run.state.ledger.balance
    run(ClockTick("m1", MONDAY + timedelta(days=3)))
    assert run.state.ledger.debt == 90
    assert run.state.ledger.balance == balance
    run(TopUpAccepted("m1", 1000, 1, "t1", "keypad", MONDAY + timedelta(days=3)))
    assert run.state.ledger.debt == 0  # half of 1000 covers the 90
    assert run.state.ledger.balance == balance + 910
    assert run.state.ledger.debt_recovered == 90


def test_standing_charge_taken_from_credit_when_there_is_some() -> None:
    run = Run(new_meter(balance=1000, tariffs=TariffSchedule.single(tariff(standing=30))))
    run(ClockTick("m1", MONDAY + timedelta(days=2)))
    assert run.state.ledger.balance == 940
    run(ClockTick("m1", MONDAY + timedelta(days=2, hours=1)))  # same day: nothing more
    assert run.state.ledger.balance == 940


def test_scheduled_tariff_change_applies_from_its_activation() -> None:
    run = Run(new_meter(balance=5000))
    activation = MONDAY + timedelta(hours=1)
    run(TariffChanged("m1", tariff("300"), MONDAY, activation))
    assert "tariff_scheduled" in run.events()
    run.read(11_000, MONDAY + timedelta(minutes=30))  # before activation: at 100
    assert run.state.ledger.balance == 4900
    run(ClockTick("m1", activation))
    run.read(12_000, MONDAY + timedelta(hours=2))  # 1 kWh, 1/3 before activation
    assert run.state.ledger.balance == 4900 - (333 * 100 + 667 * 300) // 1000
    assert len(run.state.settings.tariffs.entries) == 1  # the old tariff was pruned


def test_scheduled_change_exact_split() -> None:
    run = Run(new_meter(balance=5000))
    start = MONDAY - timedelta(hours=1)  # last reading
    run(TariffChanged("m1", tariff("300"), start, start + timedelta(hours=1)))
    run.read(12_000, start + timedelta(hours=2))  # 2 kWh over 2 h: 1 at 100, 1 at 300
    assert run.state.ledger.balance == 5000 - 400


def test_out_of_order_reading_is_ignored() -> None:
    run = Run(new_meter())
    run.read(11_000, MONDAY)
    run.read(12_000, MONDAY - timedelta(minutes=1))
    assert run.events() == ["reading_ignored"]
    assert run.state.ledger.balance == 900


def test_alarm_and_display_follow_the_credit_level() -> None:
    run = Run(new_meter(balance=600))
    run.read(11_000, MONDAY)  # balance 500: alarm 1
    assert SetAlarm("m1", True) in run.commands
    assert WriteDisplay("m1", DisplayCode.LOW_CREDIT, 500) in run.commands
    balance = next(c for c in run.commands if isinstance(c, Publish) and c.kind == "balance")
    assert balance.body["credit_state"] == "low_credit"


def test_forecast_from_recent_consumption() -> None:
    run = Run(new_meter(balance=1000, overdraft_limit=500))
    for hour in range(1, 5):
        run.read(10_000 + hour * 1000, MONDAY + timedelta(hours=hour - 1))  # 100 per hour
    now = MONDAY + timedelta(hours=3)
    # 600 left, 500 of emergency credit: 11 hours at 100 an hour
    assert forecast(run.state, now) == now + timedelta(hours=11)


def test_forecast_none_when_nothing_is_spent() -> None:
    assert forecast(new_meter(), MONDAY) is None


def test_next_deadline_is_the_next_window_edge_or_midnight() -> None:
    state = new_meter()
    assert next_deadline(state, MONDAY) == MONDAY.replace(hour=18)
    assert next_deadline(state, MONDAY.replace(hour=19)) == MONDAY.replace(hour=0) + timedelta(
        days=1
    )
