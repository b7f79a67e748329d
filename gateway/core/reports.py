"""The messages and meter writes that report a step's outcome, built in one place for the
general step and the steady-reading fast path alike (the bodies are defined in
``protocol.messages``)."""

from __future__ import annotations

from datetime import datetime

from gateway.core.commands import DisplayCode, Publish
from gateway.core.events import ReadingReceived
from gateway.core.meter_state import MeterState
from gateway.core.states import CreditState
from protocol.event_kinds import EventKind
from protocol.messages import Balance, JsonValue, Reading, as_json, event_body

#: What the display shows in each state when nothing else is to be said.
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
#: States in which the meter's low-credit alarm is on.
ALARM_STATES = frozenset(
    {CreditState.LOW, CreditState.VERY_LOW, CreditState.EMERGENCY, CreditState.EXHAUSTED}
)


def reading_report(meter_id: str, event: ReadingReceived, charged: int) -> Publish:
    """The ``reading`` message of a reading the ledger took."""
    body: Reading = {
        "kind": "reading",
        "energy_import_wh": event.energy_import_wh,
        "power_w": event.power_w,
        "voltage_v": event.voltage_v,
        "relay_closed": event.relay_closed,
        "charged": charged,
    }
    message = as_json(body)
    for name, value in event.measured:
        message[name] = value
    return Publish(meter_id, "reading", message)


def balance_report(state: MeterState, currency: str, exhaustion: datetime | None) -> Publish:
    """The ``balance`` message of ``state``, with its forecast exhaustion time."""
    ledger = state.ledger
    body: Balance = {
        "kind": "balance",
        "balance": ledger.balance,
        "currency": currency,
        "credit_state": str(state.credit),
        "debt": ledger.debt,
        "relay": state.relay_word(),
        "forecast_exhaustion": exhaustion.isoformat() if exhaustion else None,
    }
    return Publish(state.meter_id, "balance", as_json(body))


def event_report(meter_id: str, name: EventKind, reason: str, **details: JsonValue) -> Publish:
    """An ``event`` message."""
    return Publish(meter_id, "event", as_json(event_body(name, reason, **details)))
