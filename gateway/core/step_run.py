"""One step in the making: the meter's state so far and the commands in order, with the
moves every kind of event shares (standing charges, walking the credit table, the relay
read back)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, time, timedelta

from gateway.core.commands import Command, DisplayCode, Reason, SetRelay
from gateway.core.ledger import Ledger
from gateway.core.meter_state import MeterState
from gateway.core.reports import event_report
from gateway.core.settings import MeterSettings
from gateway.core.states import (
    RELAY_OPEN_STATES,
    WINDOW_DEBT_CAP,
    CreditState,
    Trigger,
    apply_trigger,
    settle,
)
from protocol.event_kinds import EventKind
from protocol.messages import JsonValue


class StepRun:
    """The accumulator of one step: the state so far and the commands in order."""

    def __init__(self, state: MeterState, now: datetime) -> None:
        self.state = state
        self.now = now
        self.commands: list[Command] = []
        #: what the display should show instead of the state's usual code
        self.display: DisplayCode | None = None

    @property
    def settings(self) -> MeterSettings:
        return self.state.settings

    def publish_event(self, name: EventKind, reason: str, **details: JsonValue) -> None:
        self.commands.append(event_report(self.state.meter_id, name, reason, **details))

    def set_ledger(self, ledger: Ledger) -> None:
        self.state = replace(self.state, ledger=ledger)

    def accrue_standing_charges(self) -> None:
        """Take the daily standing charges of every local day up to today."""
        ledger = self.state.ledger
        schedule = self.settings.tariffs
        tz = schedule.at(self.now).tz
        today = self.now.astimezone(tz).date()
        paid = ledger.standing_paid_through
        if paid is None:
            self.set_ledger(replace(ledger, standing_paid_through=today))
            return
        if paid >= today:
            return
        days, from_balance, to_debt = 0, 0, 0
        day = paid + timedelta(days=1)
        while day <= today:
            midnight = datetime.combine(day, time(0), tzinfo=tz)
            amount = schedule.at(midnight).standing_charge_per_day
            ledger, taken, owed = ledger.charge_standing(amount)
            days, from_balance, to_debt = days + 1, from_balance + taken, to_debt + owed
            day += timedelta(days=1)
        self.set_ledger(replace(ledger, standing_paid_through=today))
        if from_balance or to_debt:
            self.publish_event(
                EventKind.STANDING_CHARGE,
                "daily standing charge",
                days=days,
                from_balance=from_balance,
                to_debt=to_debt,
                through=today.isoformat(),
            )

    def fire(self, trigger: Trigger, reason: Reason) -> bool:
        """Move through the table by ``trigger`` (False when it does not apply here)."""
        target = apply_trigger(self.state.meter_id, self.state.credit, trigger)
        if target is None:
            return False
        self._enter(target, trigger, reason)
        return True

    def settle(self, *, switching: bool = True) -> None:
        """Walk the table until the credit state matches the balance. Without
        ``switching`` only the credit level moves: the relay waits for the event."""
        state = self.state
        for move in settle(
            state.meter_id,
            state.credit,
            balance=state.ledger.balance,
            settings=state.settings,
            now=self.now,
            comm_ok=state.comm_ok,
            switching=switching,
        ):
            if move.reason.rule == WINDOW_DEBT_CAP:
                self.publish_event(
                    EventKind.WINDOW_DEBT_CAP,
                    f"the debt reached the cap of window {move.reason.window}",
                    window=move.reason.window,
                    cap=self.settings.window_debt_cap,
                    floor=-(self.settings.overdraft_limit + self.settings.window_debt_cap),
                    balance=move.reason.balance,
                )
            self._enter(move.target, move.trigger, move.reason)

    def _enter(self, target: CreditState, trigger: Trigger, reason: Reason) -> None:
        """Record the move to ``target``, and switch the relay if the move does."""
        before = self.state.credit
        self.state = replace(self.state, credit=target)
        self.publish_event(
            EventKind.CREDIT_STATE_CHANGED,
            reason.rule,
            **{"from": str(before), "to": str(target), "trigger": str(trigger)},
            decision=reason.to_json(),
        )
        was_closed = before not in RELAY_OPEN_STATES
        closed = self.state.relay_closed
        if was_closed != closed:
            self.commands.append(SetRelay(self.state.meter_id, closed, reason))
            self.publish_event(
                EventKind.RELAY_CLOSED if closed else EventKind.RELAY_OPENED,
                reason.rule,
                decision=reason.to_json(),
            )

    def relay_observed(self, closed: bool) -> None:
        """The relay read back: report a disagreement once, ask again while it lasts
        (unless the meter's load limit opened it), report its end."""
        state = self.state
        self.state = replace(state, relay_observed=closed)
        if closed == state.relay_closed:
            if state.relay_mismatch_reported:
                self.state = replace(self.state, relay_mismatch_reported=False)
                self.publish_event(
                    EventKind.RELAY_MISMATCH_CLEARED,
                    "relay position agrees with the command again",
                    closed=closed,
                )
            return
        tripped = "load_limit_tripped" in state.flags
        if not state.relay_mismatch_reported:
            # Once per disagreement, not at every reading while it lasts.
            self.publish_event(
                EventKind.RELAY_MISMATCH,
                "relay position differs from the command",
                desired_closed=state.relay_closed,
                observed_closed=closed,
                load_limit_tripped=tripped,
            )
            self.state = replace(self.state, relay_mismatch_reported=True)
        if not tripped:
            # Asked at every disagreeing observation; the shell paces the attempts.
            self.commands.append(
                SetRelay(
                    state.meter_id,
                    state.relay_closed,
                    Reason(
                        "relay_readback_mismatch", state.ledger.balance, None, str(state.credit)
                    ),
                    retry=True,
                )
            )
