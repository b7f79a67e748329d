"""The enforcement state machine, as a table you can print (and ``scripts/gen_credit_states.py``
draws into ``docs/credit-states.md``).

States mix the credit level with the supply: the five supplied levels, then the states
where the relay is open. The only way to a credit disconnection is ``EXHAUSTED`` +
``DISCONNECT_DUE``, and the driver raises that trigger only outside no-disconnect windows,
with communication up; ``PROTECTED`` has no way out but ``PROTECT_OFF``.
"""

from __future__ import annotations

import logging
from enum import StrEnum

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
