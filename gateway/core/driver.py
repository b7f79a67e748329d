"""The per-meter driver: ``step(state, event, now) -> (state, commands)``. Pure.

Order inside a step: time-driven charges first (daily standing charges up to ``now``), then
the event itself, then the credit level is settled through the transition table, then the
commands that report the outcome (balance, display, alarm) are added.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta, timezone
from fractions import Fraction
from typing import Any

from pydantic import JsonValue

from gateway.core.commands import (
    Command,
    DisplayCode,
    Publish,
    Reason,
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
    TokenRejected,
    TopUpAccepted,
)
from gateway.core.forecast import SpendSample, add_sample, exhaustion_time
from gateway.core.frozen import quick_init
from gateway.core.ledger import DeltaKind, Ledger, max_plausible_wh, register_delta
from gateway.core.money import round_ratio
from gateway.core.settings import MeterSettings
from gateway.core.states import (
    RELAY_OPEN_STATES,
    SUPPLIED_LEVELS,
    CreditState,
    Trigger,
    apply_trigger,
)
from gateway.core.tariff import price_consumption, steady_day

ALARM_STATES = frozenset(
    {CreditState.LOW, CreditState.VERY_LOW, CreditState.EMERGENCY, CreditState.EXHAUSTED}
)
DISPLAY_FOR_STATE = {
    CreditState.NORMAL: DisplayCode.NORMAL,
    CreditState.LOW: DisplayCode.LOW_CREDIT,
    CreditState.VERY_LOW: DisplayCode.VERY_LOW_CREDIT,
    CreditState.EMERGENCY: DisplayCode.EMERGENCY_CREDIT,
    CreditState.EXHAUSTED: DisplayCode.CREDIT_EXHAUSTED,
    CreditState.DISCONNECTED: DisplayCode.DISCONNECTED,
    CreditState.RECONNECT_ARMED: DisplayCode.PRESS_BUTTON,
    CreditState.PROTECTED: DisplayCode.PROTECTED,
    CreditState.REMOTE_DISCONNECTED: DisplayCode.REMOTE_DISCONNECTED,
}
LEVEL_TRIGGER_FOR = {
    CreditState.NORMAL: Trigger.CREDIT_NORMAL,
    CreditState.LOW: Trigger.CREDIT_LOW,
    CreditState.VERY_LOW: Trigger.CREDIT_VERY_LOW,
    CreditState.EMERGENCY: Trigger.CREDIT_EMERGENCY,
    CreditState.EXHAUSTED: Trigger.CREDIT_EXHAUSTED,
}
TAMPER_FLAGS = ("cover_open", "magnetic_tamper", "load_limit_tripped", "reverse_energy")
#: The flag a refused reading leaves until the next good one (one event per episode).
INVALID_READING = "reading_invalid"
#: ``PollFailed.kind`` of a reading whose values the ledger cannot take.
INVALID_VALUE_FAILURE = "invalid_value"
#: Credit states in which a meter that stops answering needs a field visit.
NEAR_EXHAUSTION = frozenset({CreditState.VERY_LOW, CreditState.EMERGENCY, CreditState.EXHAUSTED})
SWITCHING_TRIGGERS = frozenset(
    {Trigger.DISCONNECT_DUE, Trigger.RECONNECT_ALLOWED, Trigger.RECONNECT_ARM}
)
_NO_FLAGS: frozenset[str] = frozenset()
REMOTE_TRIGGERS = {
    RemoteKind.DISCONNECT: Trigger.REMOTE_DISCONNECT,
    RemoteKind.RECONNECT: Trigger.REMOTE_RECONNECT,
    RemoteKind.PROTECT_ON: Trigger.PROTECT_ON,
    RemoteKind.PROTECT_OFF: Trigger.PROTECT_OFF,
}


@quick_init
@dataclass(frozen=True, slots=True)
class MeterState:
    """Everything the core knows about one meter; the store persists it whole."""

    meter_id: str
    settings: MeterSettings
    ledger: Ledger
    credit: CreditState = CreditState.NORMAL
    comm_ok: bool = True
    #: status flags raised at the last reading (events fire on the rising edge)
    flags: frozenset[str] = field(default_factory=frozenset)
    spend: tuple[SpendSample, ...] = ()
    relay_observed: bool | None = None
    #: a relay_mismatch event was published and the relay still disagrees
    relay_mismatch_reported: bool = False
    #: the last reading saw the relay open (consumption since then is bypass)
    open_at_last_reading: bool = False

    @property
    def relay_closed(self) -> bool:
        """Whether the core wants the supply on."""
        return self.credit not in RELAY_OPEN_STATES

    def relay_word(self) -> str:
        if self.credit == CreditState.RECONNECT_ARMED:
            return "armed"
        return "closed" if self.relay_closed else "open"


def credit_level(balance: int, settings: MeterSettings) -> CreditState:
    """The staged credit level of a balance (DOMAIN.md, credit states)."""
    if balance > settings.alarm1:
        return CreditState.NORMAL
    if balance > settings.alarm2:
        return CreditState.LOW
    if balance > 0:
        return CreditState.VERY_LOW
    if balance > -settings.overdraft_limit:
        return CreditState.EMERGENCY
    return CreditState.EXHAUSTED


def enrol(
    meter_id: str,
    settings: MeterSettings,
    now: datetime,
    *,
    opening_balance: int = 0,
    opening_debt: int = 0,
    protected: bool = False,
) -> MeterState:
    """A newly enrolled meter: the standing charge starts the day after ``now``, the first
    reading is its baseline. A meter enrolled without credit starts exhausted but supplied;
    the first step decides whether to disconnect."""
    if opening_debt < 0:
        raise ValueError("opening_debt must be >= 0")
    today = now.astimezone(settings.tariffs.at(now).tz).date()
    ledger = Ledger(
        balance=opening_balance,
        debt=opening_debt,
        opening_balance=opening_balance,
        standing_paid_through=today,
    )
    credit = CreditState.PROTECTED if protected else credit_level(opening_balance, settings)
    return MeterState(meter_id, settings, ledger, credit)


def next_deadline(state: MeterState, now: datetime) -> datetime:
    """When the shell must send a ``ClockTick`` at the latest: the next local midnight, window
    edge or tariff activation."""
    tz = state.settings.tariffs.at(now).tz
    tomorrow = now.astimezone(tz).date() + timedelta(days=1)
    candidates = [datetime.combine(tomorrow, time(0), tzinfo=tz)]
    edge = state.settings.windows.next_edge(now)
    if edge is not None:
        candidates.append(edge)
    candidates += [
        e.activates_at
        for e in state.settings.tariffs.entries
        if e.activates_at is not None and e.activates_at > now
    ]
    return min(candidates)


def forecast(state: MeterState, now: datetime) -> datetime | None:
    """Expected time the meter will be exhausted (balance down to -overdraft limit)."""
    return exhaustion_time(
        state.spend,
        state.ledger.balance + state.settings.overdraft_limit,
        state.settings.tariffs.at(now).standing_charge_per_day,
        now,
    )


def event_body(name: str, reason: str, **details: JsonValue) -> dict[str, JsonValue]:
    """The body of an ``event`` message (the store adds the envelope)."""
    return {"kind": "event", "event": name, "reason": reason, "details": details}


class _Run:
    """The accumulator of one step: the state so far and the commands in order."""

    def __init__(self, state: MeterState, now: datetime) -> None:
        self.state = state
        self.now = now
        self.commands: list[Command] = []
        self.display: DisplayCode | None = None

    # ------------------------------------------------------------------ helpers
    @property
    def settings(self) -> MeterSettings:
        return self.state.settings

    def publish_event(self, name: str, reason: str, **details: JsonValue) -> None:
        self.commands.append(
            Publish(self.state.meter_id, "event", event_body(name, reason, **details))
        )

    def set_ledger(self, ledger: Ledger) -> None:
        self.state = replace(self.state, ledger=ledger)

    def window(self) -> str | None:
        return self.settings.windows.active(self.now)

    # ------------------------------------------------------------------ time
    def accrue_standing_charges(self) -> None:
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
                "standing_charge",
                "daily standing charge",
                days=days,
                from_balance=from_balance,
                to_debt=to_debt,
                through=today.isoformat(),
            )

    # ------------------------------------------------------------------ transitions
    def fire(self, trigger: Trigger, reason: Reason) -> bool:
        before = self.state.credit
        target = apply_trigger(self.state.meter_id, before, trigger)
        if target is None:
            return False
        self.state = replace(self.state, credit=target)
        self.publish_event(
            "credit_state_changed",
            reason.rule,
            **{"from": str(before), "to": str(target), "trigger": str(trigger)},
            decision=reason.to_json(),
        )
        was_closed = before not in RELAY_OPEN_STATES
        if was_closed != self.state.relay_closed:
            closed = self.state.relay_closed
            self.commands.append(SetRelay(self.state.meter_id, closed, reason))
            self.publish_event(
                "relay_closed" if closed else "relay_opened", reason.rule, decision=reason.to_json()
            )
        return True

    def disconnect_allowed(self) -> tuple[bool, str | None]:
        window = self.window()
        return window is None and self.state.comm_ok, window

    def settle(self, *, switching: bool = True) -> None:
        """Move through the table until the credit state matches the balance. Without
        ``switching`` only the credit level moves: the relay waits for the event."""
        for _ in range(4):
            trigger, reason = self.level_trigger()
            if trigger is None or (not switching and trigger in SWITCHING_TRIGGERS):
                return
            if not self.fire(trigger, reason):
                return

    def level_trigger(self) -> tuple[Trigger | None, Reason]:
        state, settings = self.state, self.settings
        balance = state.ledger.balance
        if state.credit in SUPPLIED_LEVELS:
            level = credit_level(balance, settings)
            if level != state.credit:
                window = self.window() if level == CreditState.EXHAUSTED else None
                return LEVEL_TRIGGER_FOR[level], Reason(
                    f"balance_{level}", balance, window, f"balance {balance}"
                )
            if state.credit == CreditState.EXHAUSTED:
                allowed, window = self.disconnect_allowed()
                if allowed:
                    return Trigger.DISCONNECT_DUE, Reason(
                        "credit_exhausted",
                        balance,
                        None,
                        f"balance {balance} at or below -{settings.overdraft_limit}, "
                        "outside no-disconnect windows",
                    )
            return None, Reason("", balance)
        if state.credit == CreditState.DISCONNECTED and balance > settings.reconnect_threshold:
            detail = f"balance {balance} above reconnect threshold {settings.reconnect_threshold}"
            if settings.reconnect_needs_button:
                return Trigger.RECONNECT_ARM, Reason("reconnect_armed", balance, None, detail)
            return Trigger.RECONNECT_ALLOWED, Reason("credit_restored", balance, None, detail)
        if state.credit == CreditState.RECONNECT_ARMED and balance <= -settings.overdraft_limit:
            return Trigger.CREDIT_EXHAUSTED, Reason("credit_exhausted", balance)
        return None, Reason("", balance)

    # ------------------------------------------------------------------ events
    def reading_invalid(self, why: str) -> None:
        """A reading the ledger cannot take: nothing charged, one event per episode (a
        good reading ends it)."""
        if INVALID_READING not in self.state.flags:
            self.publish_event("reading_invalid", why)
            self.state = replace(self.state, flags=self.state.flags | {INVALID_READING})

    def reading(self, event: ReadingReceived) -> None:
        state, settings = self.state, self.settings
        ledger = state.ledger
        if not 0 <= event.energy_import_wh < 1 << settings.register_width_bits:
            self.reading_invalid(
                f"energy register {event.energy_import_wh} Wh outside a "
                f"{settings.register_width_bits}-bit register: not charged"
            )
            return
        if ledger.read_at is not None and event.read_at <= ledger.read_at:
            self.publish_event(
                "reading_ignored",
                "not newer than the last reading",
                read_at=event.read_at.isoformat(),
            )
            return
        elapsed = event.read_at - ledger.read_at if ledger.read_at else timedelta(0)
        plausible = max_plausible_wh(
            settings.rated_power_w, elapsed, settings.plausibility_margin_percent
        )
        delta = register_delta(
            ledger.register_wh, event.energy_import_wh, settings.register_width_bits, plausible
        )
        charged = 0
        moved: dict[str, Any] = {"register_wh": event.energy_import_wh, "read_at": event.read_at}
        if delta.kind in (DeltaKind.NORMAL, DeltaKind.ROLLOVER) and ledger.read_at is not None:
            priced = price_consumption(
                settings.tariffs, ledger.read_at, event.read_at, delta.energy_wh, ledger.tier
            )
            ledger, charged = ledger.charge_cost(priced.cost, tier=priced.tier, **moved)
            if delta.kind == DeltaKind.ROLLOVER:
                self.publish_event(
                    "register_rollover", "register wrapped", energy_wh=delta.energy_wh
                )
            # Bypass only when the relay was seen open at both ends of the interval: the
            # first reading after a cut-off still holds the energy used before it.
            bypassed = state.open_at_last_reading and event.relay_closed is False
            if bypassed and delta.energy_wh > 0:
                self.publish_event(
                    "tamper",
                    "bypass: consumption while the relay is open",
                    energy_wh=delta.energy_wh,
                    charged=charged,
                )
        elif delta.kind == DeltaKind.IMPLAUSIBLE:
            ledger = replace(ledger, held_wh=ledger.held_wh + delta.energy_wh, **moved)
            self.publish_event(
                "energy_held",
                "jump beyond the rated power over the elapsed time: held for review",
                energy_wh=delta.energy_wh,
                plausible_wh=plausible,
                held_wh=ledger.held_wh,
            )
        else:
            if delta.kind == DeltaKind.BACKWARDS:
                self.publish_event(
                    "register_backwards",
                    "register went backwards (meter reset or replaced): no refund, new baseline",
                    previous_wh=ledger.register_wh,
                    current_wh=event.energy_import_wh,
                )
            ledger = replace(ledger, **moved)
        flags = frozenset(name for name in TAMPER_FLAGS if getattr(event, name))
        self.state = replace(
            state,
            ledger=ledger,
            spend=add_sample(state.spend, SpendSample(event.read_at, ledger.charged)),
            flags=flags,
            open_at_last_reading=event.relay_closed is False,
        )
        self.commands.append(
            Publish(
                state.meter_id,
                "reading",
                {
                    "kind": "reading",
                    "energy_import_wh": event.energy_import_wh,
                    "power_w": event.power_w,
                    "voltage_v": event.voltage_v,
                    "relay_closed": event.relay_closed,
                    "charged": charged,
                },
            )
        )
        for name in sorted(flags - state.flags):
            kind = "load_limit" if name == "load_limit_tripped" else "tamper"
            self.publish_event(kind, name, power_w=event.power_w)
        if event.relay_closed is not None:
            self.relay_observed(event.relay_closed)
        if event.button_pressed:
            self.fire(Trigger.BUTTON_PRESSED, Reason("button_pressed", ledger.balance))

    def top_up(self, event: TopUpAccepted) -> None:
        ledger, settings = self.state.ledger, self.settings
        meter = self.state.meter_id
        if event.amount <= 0:
            self.refuse_top_up(event.token_id, "invalid_amount", event.amount)
            return
        recovered = settings.tariffs.at(self.now).debt_recovery(event.amount, ledger.debt)
        if ledger.balance + event.amount - recovered > settings.max_balance:
            self.refuse_top_up(event.token_id, "over_max_balance", event.amount)
            self.display = DisplayCode.OVER_MAX_BALANCE
            return
        self.set_ledger(ledger.top_up(event.amount, recovered))
        credited = event.amount - recovered
        self.commands.append(
            TopUpDecision(meter, event.token_id, True, "accepted", credited, recovered)
        )
        self.publish_event(
            "token_accepted",
            "accepted",
            token_id=event.token_id,
            channel=event.channel,
            counter=event.counter,
            amount=event.amount,
            credited=credited,
            debt_recovered=recovered,
        )
        self.display = DisplayCode.TOKEN_ACCEPTED

    def refuse_top_up(self, token_id: str, reason: str, amount: int) -> None:
        balance = self.state.ledger.balance
        self.commands.append(TopUpDecision(self.state.meter_id, token_id, False, reason))
        self.publish_event(
            "token_rejected",
            reason,
            token_id=token_id,
            amount=amount,
            balance=balance,
            max_balance=self.settings.max_balance,
        )
        self.display = DisplayCode.TOKEN_REJECTED

    def relay_observed(self, closed: bool) -> None:
        state = self.state
        self.state = replace(state, relay_observed=closed)
        if closed == state.relay_closed:
            if state.relay_mismatch_reported:
                self.state = replace(self.state, relay_mismatch_reported=False)
                self.publish_event(
                    "relay_mismatch_cleared",
                    "relay position agrees with the command again",
                    closed=closed,
                )
            return
        tripped = "load_limit_tripped" in state.flags
        if not state.relay_mismatch_reported:
            # Once per disagreement, not at every reading while it lasts.
            self.publish_event(
                "relay_mismatch",
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

    def handle(self, event: Event) -> None:
        balance = self.state.ledger.balance
        match event:
            case ReadingReceived():
                self.reading(event)
            case PollFailed(kind=kind, reason=why):
                if kind == INVALID_VALUE_FAILURE:
                    self.reading_invalid(why)
            case TopUpAccepted():
                self.top_up(event)
            case TokenRejected(
                reason=reason,
                channel=channel,
                token_id=token_id,
                detail=detail,
                lockout_alarm=alarm,
            ):
                self.publish_event(
                    "token_rejected", reason, channel=channel, token_id=token_id, detail=detail
                )
                if alarm:
                    self.publish_event(
                        "keypad_lockout_alarm",
                        "repeated bad keypad entries in a day: possible brute force",
                        last_reason=reason,
                    )
                self.display = DisplayCode.TOKEN_REJECTED
            case ButtonPressed():
                self.fire(Trigger.BUTTON_PRESSED, Reason("button_pressed", balance))
            case ClockTick():
                pass
            case RemoteCommand(kind=kind, reason=why, request_id=request_id):
                fired = self.fire(
                    REMOTE_TRIGGERS[kind],
                    Reason(f"remote_{kind}", balance, None, why),
                )
                if not fired:
                    self.publish_event(
                        "remote_command_ignored",
                        f"{kind} does not apply in state {self.state.credit}",
                        request_id=request_id,
                    )
            case RelayObserved(closed=closed):
                self.relay_observed(closed)
            case CommunicationLost(reason=why, self_trips=self_trips):
                if self.state.comm_ok:
                    self.state = replace(self.state, comm_ok=False)
                    self.publish_event("communication_lost", why or "no answer")
                    if not self_trips and self.state.credit in NEAR_EXHAUSTION:
                        # The gateway cannot switch what it cannot reach, and this meter
                        # will not open by itself: someone must go and look.
                        self.publish_event(
                            "communication_lost_while_exhausted",
                            "the meter stopped answering near or past exhaustion and cannot "
                            "cut supply by itself: send a field visit",
                            credit_state=str(self.state.credit),
                            balance=balance,
                        )
            case CommunicationRestored():
                if not self.state.comm_ok:
                    self.state = replace(self.state, comm_ok=True)
                    self.publish_event("communication_restored", "answering again")
            case TariffChanged(tariff=tariff, activates_at=activates_at):
                when = (
                    activates_at
                    if activates_at is not None and activates_at > self.now
                    else self.now
                )
                schedule = self.settings.tariffs.with_change(tariff, when)
                self.state = replace(self.state, settings=replace(self.settings, tariffs=schedule))
                self.publish_event(
                    "tariff_scheduled", "tariff update", activates_at=when.isoformat()
                )


def step(state: MeterState, event: Event, now: datetime) -> tuple[MeterState, list[Command]]:
    """Apply one event to one meter at ``now``; return the new state and what to do."""
    if event.meter_id != state.meter_id:
        raise ValueError(f"event for {event.meter_id} given to meter {state.meter_id}")
    if now.tzinfo is None:
        raise ValueError("now must carry a time zone")
    if type(event) is ReadingReceived:
        quick = _steady_reading(state, event, now)
        if quick is not None:
            return quick
    return _step(state, event, now)


def _settled(credit: CreditState, balance: int, settings: MeterSettings) -> bool:
    """Whether ``level_trigger`` has nothing to fire for this credit state and balance;
    ``EXHAUSTED`` is never settled here (its disconnection depends on windows and comm)."""
    if credit in SUPPLIED_LEVELS:
        return credit != CreditState.EXHAUSTED and credit_level(balance, settings) == credit
    if credit == CreditState.DISCONNECTED:
        return balance <= settings.reconnect_threshold
    if credit == CreditState.RECONNECT_ARMED:
        return balance > -settings.overdraft_limit
    return True


def _steady_reading(
    state: MeterState, event: ReadingReceived, now: datetime
) -> tuple[MeterState, list[Command]] | None:
    """``_step`` for the common reading, or None to let ``_step`` do it.

    Common means: one tariff in the schedule; the standing charge already taken for today;
    a normal register step inside one price segment of one steady local day; no flag,
    button or relay disagreement; and a balance that moves no credit state. The result is
    then ``_step``'s to the last field and command (tests/unit/test_core_fast_path.py), but
    priced in integers and built without the general walk.
    """
    settings = state.settings
    entries = settings.tariffs.entries
    ledger = state.ledger
    start, end = ledger.read_at, event.read_at
    previous, current = ledger.register_wh, event.energy_import_wh
    credit = state.credit
    if (
        len(entries) != 1
        or start is None
        or previous is None
        or not start < end
        # wall-clock arithmetic on these is the absolute one (the interpolation's midpoint)
        or type(start.tzinfo) is not timezone
        or type(end.tzinfo) is not timezone
        or event.button_pressed
        or event.cover_open
        or event.magnetic_tamper
        or event.load_limit_tripped
        or event.reverse_energy
        or not previous <= current < 1 << settings.register_width_bits
    ):
        return None
    observed = event.relay_closed
    relay_closed = credit not in RELAY_OPEN_STATES
    if observed is not None and (observed != relay_closed or state.relay_mismatch_reported):
        return None  # a disagreement to report, or the end of one
    if observed is False and state.open_at_last_reading:
        return None  # maybe a bypass to report
    tariff = entries[0].tariff
    today = steady_day(tariff, now)
    paid = ledger.standing_paid_through
    if today is None or paid is None or paid < today.day:
        return None
    energy_wh = current - previous
    elapsed = end - start
    if energy_wh > max_plausible_wh(
        settings.rated_power_w, elapsed, settings.plausibility_margin_percent
    ):
        return None
    segment = today.segment(start, end)
    balance = ledger.balance
    if segment is None or not _settled(credit, balance, settings):
        return None
    # Ledger.charge_cost in integers: exact = unbilled + energy * rate, rounded once.
    unbilled = ledger.unbilled
    denominator = unbilled.denominator * segment.rate_denominator
    exact = (
        unbilled.numerator * segment.rate_denominator
        + energy_wh * segment.rate_numerator * unbilled.denominator
    )
    charged = round_ratio(exact, denominator)
    balance -= charged
    if not _settled(credit, balance, settings):
        return None
    new_ledger = Ledger(
        balance,
        ledger.debt,
        current,
        end,
        Fraction(exact - charged * denominator, denominator),
        ledger.held_wh,
        ledger.tier,
        paid,
        ledger.opening_balance,
        ledger.topups,
        ledger.charged + charged,
        ledger.debt_recovered,
        ledger.standing_to_debt,
    )
    after = MeterState(
        state.meter_id,
        settings,
        new_ledger,
        credit,
        state.comm_ok,
        _NO_FLAGS,
        add_sample(state.spend, SpendSample(end, new_ledger.charged)),
        state.relay_observed if observed is None else observed,
        state.relay_mismatch_reported,
        observed is False,
    )
    meter = state.meter_id
    commands: list[Command] = [
        Publish(
            meter,
            "reading",
            {
                "kind": "reading",
                "energy_import_wh": current,
                "power_w": event.power_w,
                "voltage_v": event.voltage_v,
                "relay_closed": observed,
                "charged": charged,
            },
        )
    ]
    if charged:
        exhaustion = exhaustion_time(
            after.spend, balance + settings.overdraft_limit, tariff.standing_charge_per_day, now
        )
        commands.append(
            Publish(
                meter,
                "balance",
                {
                    "kind": "balance",
                    "balance": balance,
                    "currency": tariff.currency,
                    "credit_state": str(credit),
                    "debt": new_ledger.debt,
                    "relay": after.relay_word(),
                    "forecast_exhaustion": exhaustion.isoformat() if exhaustion else None,
                },
            )
        )
        commands.append(WriteDisplay(meter, DISPLAY_FOR_STATE[credit], balance))
    return after, commands


def _step(state: MeterState, event: Event, now: datetime) -> tuple[MeterState, list[Command]]:
    """The general step: every event, every case (``step`` checks the arguments)."""
    before = state
    run = _Run(state, now)
    run.accrue_standing_charges()
    run.settle(switching=False)  # time alone may have moved the level (standing charge)
    run.handle(event)
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
        exhaustion = forecast(after, now)
        run.commands.append(
            Publish(
                meter,
                "balance",
                {
                    "kind": "balance",
                    "balance": ledger.balance,
                    "currency": after.settings.tariffs.at(now).currency,
                    "credit_state": str(after.credit),
                    "debt": ledger.debt,
                    "relay": after.relay_word(),
                    "forecast_exhaustion": exhaustion.isoformat() if exhaustion else None,
                },
            )
        )
    if changed or run.display is not None:
        code = run.display if run.display is not None else DISPLAY_FOR_STATE[after.credit]
        run.commands.append(WriteDisplay(meter, code, ledger.balance))
    if (after.credit in ALARM_STATES) != (before.credit in ALARM_STATES):
        run.commands.append(SetAlarm(meter, after.credit in ALARM_STATES))
    return after, run.commands


def standing_day(state: MeterState) -> date | None:
    """The last local day whose standing charge is taken (for reports)."""
    return state.ledger.standing_paid_through
