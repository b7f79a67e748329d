"""One meter's step: ``step(state, event, now) -> (state, commands)``. Pure.

Order inside a step: time-driven charges first (daily standing charges up to ``now``), then
the event itself, then the credit state is settled through the table
(``gateway.core.states``), then the commands that report the outcome (balance, display,
alarm) are added. The common reading takes the fast path of ``gateway.core.steady``, to
the same result.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from gateway.core.commands import (
    Command,
    DisplayCode,
    Reason,
    SetAlarm,
    TopUpDecision,
    WriteDisplay,
)
from gateway.core.events import (
    ButtonPressed,
    ClockTick,
    CommunicationLost,
    CommunicationRestored,
    Event,
    LoadLimitObserved,
    ManagementTokenAccepted,
    MeterNotice,
    PollFailed,
    ReadingReceived,
    RelayObserved,
    RemoteCommand,
    TariffChanged,
    TokenRejected,
    TopUpAccepted,
)
from gateway.core.management import apply_management_token, load_limit_observed
from gateway.core.meter_state import MeterState, forecast
from gateway.core.readings import apply_reading, reading_invalid
from gateway.core.reports import ALARM_STATES, DISPLAY_FOR_STATE, balance_report
from gateway.core.states import REMOTE_TRIGGERS, CreditState, Trigger
from gateway.core.steady import steady_reading
from gateway.core.step_run import StepRun
from protocol.event_kinds import EventKind
from protocol.tokens.errors import GatewayRefusal, RejectReason, TokenRefusal

#: ``PollFailed.kind`` of a reading whose values the ledger cannot take.
INVALID_VALUE_FAILURE = "invalid_value"
#: Credit states in which a meter that stops answering needs a field visit.
NEAR_EXHAUSTION = frozenset({CreditState.VERY_LOW, CreditState.EMERGENCY, CreditState.EXHAUSTED})


def step(state: MeterState, event: Event, now: datetime) -> tuple[MeterState, list[Command]]:
    """Apply one event to one meter at ``now``; return the new state and what to do."""
    if event.meter_id != state.meter_id:
        raise ValueError(f"event for {event.meter_id} given to meter {state.meter_id}")
    if now.tzinfo is None:
        raise ValueError("now must carry a time zone")
    if type(event) is ReadingReceived:
        quick = steady_reading(state, event, now)
        if quick is not None:
            return quick
    return general_step(state, event, now)


def general_step(
    state: MeterState, event: Event, now: datetime
) -> tuple[MeterState, list[Command]]:
    """The general step: every event, every case (``step`` checks the arguments)."""
    before = state
    run = StepRun(state, now)
    run.accrue_standing_charges()
    run.settle(switching=False)  # time alone may have moved the level (standing charge)
    apply_event(run, event)
    run.settle()
    after = run.state
    keep_from = min(after.ledger.read_at or now, now)
    tariffs = after.settings.tariffs.pruned(keep_from)
    if tariffs is not after.settings.tariffs:
        after = replace(after, settings=replace(after.settings, tariffs=tariffs))
    meter = after.meter_id
    ledger, old = after.ledger, before.ledger
    changed = (
        ledger.balance != old.balance or ledger.debt != old.debt or after.credit != before.credit
    )
    if changed:
        currency = after.settings.tariffs.at(now).currency
        run.commands.append(balance_report(after, currency, forecast(after, now)))
    if changed or run.display is not None:
        code = run.display if run.display is not None else DISPLAY_FOR_STATE[after.credit]
        run.commands.append(WriteDisplay(meter, code, ledger.balance))
    if (after.credit in ALARM_STATES) != (before.credit in ALARM_STATES):
        run.commands.append(SetAlarm(meter, after.credit in ALARM_STATES))
    return after, run.commands


def apply_event(run: StepRun, event: Event) -> None:
    """What ``event`` itself does to the meter."""
    balance = run.state.ledger.balance
    match event:
        case ReadingReceived():
            apply_reading(run, event)
        case PollFailed(kind=kind, reason=why):
            if kind == INVALID_VALUE_FAILURE:
                reading_invalid(run, why)
        case TopUpAccepted():
            credit_top_up(run, event)
        case TokenRejected():
            report_token_rejected(run, event)
        case ManagementTokenAccepted():
            apply_management_token(run, event)
        case LoadLimitObserved():
            load_limit_observed(run, event)
        case ButtonPressed():
            run.fire(Trigger.BUTTON_PRESSED, Reason("button_pressed", balance))
        case ClockTick():
            pass
        case RemoteCommand(kind=kind, reason=why, request_id=request_id):
            fired = run.fire(REMOTE_TRIGGERS[kind], Reason(f"remote_{kind}", balance, None, why))
            if not fired:
                run.publish_event(
                    EventKind.REMOTE_COMMAND_IGNORED,
                    f"{kind} does not apply in state {run.state.credit}",
                    request_id=request_id,
                )
        case RelayObserved(closed=closed):
            run.relay_observed(closed)
        case CommunicationLost():
            communication_lost(run, event)
        case CommunicationRestored():
            if not run.state.comm_ok:
                run.state = replace(run.state, comm_ok=True)
                run.publish_event(EventKind.COMMUNICATION_RESTORED, "answering again")
        case TariffChanged(tariff=tariff, activates_at=activates_at):
            when = activates_at if activates_at is not None and activates_at > run.now else run.now
            schedule = run.settings.tariffs.with_change(tariff, when)
            run.state = replace(run.state, settings=replace(run.settings, tariffs=schedule))
            run.publish_event(
                EventKind.TARIFF_SCHEDULED, "tariff update", activates_at=when.isoformat()
            )
        case MeterNotice(name=name, reason=why, details=details):
            run.publish_event(name, why, **dict(details))


def credit_top_up(run: StepRun, event: TopUpAccepted) -> None:
    """Credit a verified token, less the debt it recovers; refuse it whole when the amount
    is not positive or the balance would pass the maximum."""
    ledger, settings = run.state.ledger, run.settings
    if event.amount <= 0:
        refuse_top_up(run, event.token_id, RejectReason.AMOUNT_OUT_OF_RANGE, event.amount)
        return
    recovered = settings.tariffs.at(run.now).debt_recovery(event.amount, ledger.debt)
    if ledger.balance + event.amount - recovered > settings.max_balance:
        refuse_top_up(run, event.token_id, GatewayRefusal.OVER_MAX_BALANCE, event.amount)
        run.display = DisplayCode.OVER_MAX_BALANCE
        return
    run.set_ledger(ledger.top_up(event.amount, recovered))
    credited = event.amount - recovered
    run.commands.append(
        TopUpDecision(run.state.meter_id, event.token_id, True, "accepted", credited, recovered)
    )
    run.publish_event(
        EventKind.TOKEN_ACCEPTED,
        "accepted",
        token_id=event.token_id,
        channel=event.channel,
        counter=event.counter,
        amount=event.amount,
        credited=credited,
        debt_recovered=recovered,
    )
    run.display = DisplayCode.TOKEN_ACCEPTED


def refuse_top_up(run: StepRun, token_id: str, reason: TokenRefusal, amount: int) -> None:
    balance = run.state.ledger.balance
    run.commands.append(TopUpDecision(run.state.meter_id, token_id, False, reason))
    run.publish_event(
        EventKind.TOKEN_REJECTED,
        reason,
        token_id=token_id,
        amount=amount,
        balance=balance,
        max_balance=run.settings.max_balance,
    )
    run.display = DisplayCode.TOKEN_REJECTED


def report_token_rejected(run: StepRun, event: TokenRejected) -> None:
    """A token refused before its money was seen: an event, and an alarm after repeated
    bad keypad entries."""
    run.publish_event(
        EventKind.TOKEN_REJECTED,
        event.reason,
        channel=event.channel,
        token_id=event.token_id,
        detail=event.detail,
    )
    if event.lockout_alarm:
        run.publish_event(
            EventKind.KEYPAD_LOCKOUT_ALARM,
            "repeated bad keypad entries in a day: possible brute force",
            last_reason=event.reason,
        )
    run.display = DisplayCode.TOKEN_REJECTED


def communication_lost(run: StepRun, event: CommunicationLost) -> None:
    """The meter stopped answering: once per outage, and a call for a field visit when it
    is near exhaustion and cannot cut supply by itself."""
    if not run.state.comm_ok:
        return
    run.state = replace(run.state, comm_ok=False)
    run.publish_event(EventKind.COMMUNICATION_LOST, event.reason or "no answer")
    if not event.self_trips and run.state.credit in NEAR_EXHAUSTION:
        # The gateway cannot switch what it cannot reach, and this meter will not open
        # by itself: someone must go and look.
        run.publish_event(
            EventKind.COMMUNICATION_LOST_WHILE_EXHAUSTED,
            "the meter stopped answering near or past exhaustion and cannot "
            "cut supply by itself: send a field visit",
            credit_state=str(run.state.credit),
            balance=run.state.ledger.balance,
        )
