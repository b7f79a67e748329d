"""The enforcement state machine: the table you can print (``scripts/gen_credit_states.py``
draws it into ``docs/credit-states.md``), which trigger the balance and the clock make due,
and the walk through the table until nothing more is due.

States mix the credit level with the supply: the five supplied levels, then the states
where the relay is open. The only way to a credit disconnection is ``EXHAUSTED`` +
``DISCONNECT_DUE``, which is due only outside no-disconnect windows (or inside one once
the balance reaches its debt cap), with communication up; ``PROTECTED`` has no way out but ``PROTECT_OFF``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from gateway.core.commands import Reason
from gateway.core.events import RemoteKind
from gateway.core.settings import MeterSettings

log = logging.getLogger(__name__)


class CreditState(StrEnum):
    NORMAL = "normal"
    LOW = "low_credit"  # alarm 1
    VERY_LOW = "very_low_credit"  # alarm 2
    EMERGENCY = "emergency_credit"  # balance at or below zero, above -overdraft limit
    EXHAUSTED = "exhausted"  # at or below -limit, supply still on (window, comm down)
    DISCONNECTED = "disconnected"
    RECONNECT_ARMED = "reconnect_armed"  # credit restored, waiting for the button
    PROTECTED = "protected"  # protected supply: never tripped
    REMOTE_DISCONNECTED = "remote_disconnected"  # switched off by a headend command


#: What each state means to a headend, one line each (docs/mqtt.md renders them).
CREDIT_STATE_MEANINGS: dict[CreditState, str] = {
    CreditState.NORMAL: "credit above the first alarm level",
    CreditState.LOW: "credit at or below the first alarm level (alarm 1)",
    CreditState.VERY_LOW: "credit at or below the second alarm level (alarm 2)",
    CreditState.EMERGENCY: "balance at or below zero, within the overdraft (emergency "
    "credit): still supplied",
    CreditState.EXHAUSTED: "overdraft used up; still supplied for now (a friendly window, or "
    "the meter cannot be reached)",
    CreditState.DISCONNECTED: "cut off for lack of credit",
    CreditState.RECONNECT_ARMED: "credit restored; supply returns when the customer presses "
    "the meter's button",
    CreditState.PROTECTED: "protected supply: never disconnected (a headend's `protect_on`)",
    CreditState.REMOTE_DISCONNECTED: "switched off by a headend's `disconnect`",
}


class Trigger(StrEnum):
    CREDIT_NORMAL = "credit_normal"
    CREDIT_LOW = "credit_low"
    CREDIT_VERY_LOW = "credit_very_low"
    CREDIT_EMERGENCY = "credit_emergency"
    CREDIT_EXHAUSTED = "credit_exhausted"
    DISCONNECT_DUE = "disconnect_due"
    RECONNECT_ALLOWED = "reconnect_allowed"
    RECONNECT_ARM = "reconnect_arm"
    BUTTON_PRESSED = "button_pressed"
    REMOTE_DISCONNECT = "remote_disconnect"
    REMOTE_RECONNECT = "remote_reconnect"
    PROTECT_ON = "protect_on"
    PROTECT_OFF = "protect_off"


#: The rule of a disconnection inside a no-disconnect window: the debt reached the cap.
WINDOW_DEBT_CAP = "window_debt_cap"

SUPPLIED_LEVELS = (
    CreditState.NORMAL,
    CreditState.LOW,
    CreditState.VERY_LOW,
    CreditState.EMERGENCY,
    CreditState.EXHAUSTED,
)
LEVEL_TRIGGERS = {
    Trigger.CREDIT_NORMAL: CreditState.NORMAL,
    Trigger.CREDIT_LOW: CreditState.LOW,
    Trigger.CREDIT_VERY_LOW: CreditState.VERY_LOW,
    Trigger.CREDIT_EMERGENCY: CreditState.EMERGENCY,
    Trigger.CREDIT_EXHAUSTED: CreditState.EXHAUSTED,
}
RELAY_OPEN_STATES = frozenset(
    {CreditState.DISCONNECTED, CreditState.RECONNECT_ARMED, CreditState.REMOTE_DISCONNECTED}
)


def _supplied_row(state: CreditState) -> dict[Trigger, CreditState]:
    row = {t: s for t, s in LEVEL_TRIGGERS.items() if s != state}
    row[Trigger.PROTECT_ON] = CreditState.PROTECTED
    row[Trigger.REMOTE_DISCONNECT] = CreditState.REMOTE_DISCONNECTED
    if state == CreditState.EXHAUSTED:
        row[Trigger.DISCONNECT_DUE] = CreditState.DISCONNECTED
    return row


TRANSITIONS: dict[CreditState, dict[Trigger, CreditState]] = {
    **{state: _supplied_row(state) for state in SUPPLIED_LEVELS},
    CreditState.DISCONNECTED: {
        Trigger.RECONNECT_ALLOWED: CreditState.NORMAL,
        Trigger.RECONNECT_ARM: CreditState.RECONNECT_ARMED,
        Trigger.PROTECT_ON: CreditState.PROTECTED,
        Trigger.REMOTE_DISCONNECT: CreditState.REMOTE_DISCONNECTED,
    },
    CreditState.RECONNECT_ARMED: {
        Trigger.BUTTON_PRESSED: CreditState.NORMAL,
        Trigger.CREDIT_EXHAUSTED: CreditState.DISCONNECTED,
        Trigger.PROTECT_ON: CreditState.PROTECTED,
        Trigger.REMOTE_DISCONNECT: CreditState.REMOTE_DISCONNECTED,
    },
    CreditState.PROTECTED: {
        Trigger.PROTECT_OFF: CreditState.NORMAL,
    },
    CreditState.REMOTE_DISCONNECTED: {
        Trigger.REMOTE_RECONNECT: CreditState.NORMAL,
        Trigger.PROTECT_ON: CreditState.PROTECTED,
    },
}


def apply_trigger(meter_id: str, state: CreditState, trigger: Trigger) -> CreditState | None:
    """The state ``trigger`` leads to from ``state``, or None when the table has no such
    transition (the trigger is ignored). The one place transitions are logged."""
    target = TRANSITIONS[state].get(trigger)
    if target is None:
        log.debug("meter %s: %s ignored in %s", meter_id, trigger, state)
        return None
    log.info("meter %s: %s --%s--> %s", meter_id, state, trigger, target)
    return target


#: The triggers that switch the relay (held back while the step only settles the level).
SWITCHING_TRIGGERS = frozenset(
    {Trigger.DISCONNECT_DUE, Trigger.RECONNECT_ALLOWED, Trigger.RECONNECT_ARM}
)
#: The trigger each headend command raises.
REMOTE_TRIGGERS = {
    RemoteKind.DISCONNECT: Trigger.REMOTE_DISCONNECT,
    RemoteKind.RECONNECT: Trigger.REMOTE_RECONNECT,
    RemoteKind.PROTECT_ON: Trigger.PROTECT_ON,
    RemoteKind.PROTECT_OFF: Trigger.PROTECT_OFF,
}
_LEVEL_TRIGGER_FOR = {state: trigger for trigger, state in LEVEL_TRIGGERS.items()}


def credit_level(balance: int, settings: MeterSettings) -> CreditState:
    """The staged credit level of a balance: above alarm1, alarm2, zero, minus the overdraft
    limit, else exhausted (docs/credit-states.md, the ``credit_*`` triggers)."""
    if balance > settings.alarm1:
        return CreditState.NORMAL
    if balance > settings.alarm2:
        return CreditState.LOW
    if balance > 0:
        return CreditState.VERY_LOW
    if balance > -settings.overdraft_limit:
        return CreditState.EMERGENCY
    return CreditState.EXHAUSTED


def due_trigger(
    credit: CreditState, balance: int, settings: MeterSettings, now: datetime, comm_ok: bool
) -> tuple[Trigger, Reason] | None:
    """The trigger due in ``credit`` with ``balance`` at ``now``, or None when the state
    matches the balance. A supplied meter follows its credit level; an exhausted one is
    disconnected outside no-disconnect windows while it answers; a disconnected one is
    reconnected (or armed) above the reconnect threshold; an armed one that runs out again
    goes back to disconnected."""
    if credit in SUPPLIED_LEVELS:
        level = credit_level(balance, settings)
        if level != credit:
            window = settings.windows.active(now) if level == CreditState.EXHAUSTED else None
            reason = Reason(f"balance_{level}", balance, window, f"balance {balance}")
            return _LEVEL_TRIGGER_FOR[level], reason
        if credit == CreditState.EXHAUSTED and comm_ok:
            window = settings.windows.active(now)
            if window is None:
                return Trigger.DISCONNECT_DUE, Reason(
                    "credit_exhausted",
                    balance,
                    None,
                    f"balance {balance} at or below -{settings.overdraft_limit}, "
                    "outside no-disconnect windows",
                )
            floor = -(settings.overdraft_limit + settings.window_debt_cap)
            if balance <= floor:
                return Trigger.DISCONNECT_DUE, Reason(
                    WINDOW_DEBT_CAP,
                    balance,
                    window,
                    f"balance {balance} at or below the debt cap {floor} of window "
                    f"{window} (window_debt_cap {settings.window_debt_cap})",
                )
        return None
    if credit == CreditState.DISCONNECTED and balance > settings.reconnect_threshold:
        detail = f"balance {balance} above reconnect threshold {settings.reconnect_threshold}"
        if settings.reconnect_needs_button:
            return Trigger.RECONNECT_ARM, Reason("reconnect_armed", balance, None, detail)
        return Trigger.RECONNECT_ALLOWED, Reason("credit_restored", balance, None, detail)
    if credit == CreditState.RECONNECT_ARMED and balance <= -settings.overdraft_limit:
        return Trigger.CREDIT_EXHAUSTED, Reason("credit_exhausted", balance)
    return None


@dataclass(frozen=True, slots=True)
class Transition:
    """One step through the table: ``source --trigger--> target``, and why."""

    source: CreditState
    trigger: Trigger
    reason: Reason
    target: CreditState


def settle(
    meter_id: str,
    credit: CreditState,
    *,
    balance: int,
    settings: MeterSettings,
    now: datetime,
    comm_ok: bool,
    switching: bool = True,
) -> list[Transition]:
    """The walk through the table from ``credit`` until no trigger is due (a fixed point:
    the balance does not move on the way). Without ``switching`` the walk stops before a
    trigger that switches the relay."""
    walk: list[Transition] = []
    for _ in CreditState:  # a walk never visits a state twice
        due = due_trigger(credit, balance, settings, now, comm_ok)
        if due is None or (not switching and due[0] in SWITCHING_TRIGGERS):
            break
        trigger, reason = due
        target = apply_trigger(meter_id, credit, trigger)
        if target is None:
            break
        walk.append(Transition(credit, trigger, reason, target))
        credit = target
    return walk
