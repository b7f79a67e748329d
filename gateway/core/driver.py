"""The core's names under their old module, for callers not yet moved: the step is in
``gateway.core.step``, the meter's state in ``gateway.core.meter_state``, event bodies in
``gateway.core.reports`` ("driver" is the meter driver of ``gateway.meter_io``). Remove
once nothing imports it."""

from gateway.core.meter_state import MeterState, enrol, forecast, next_deadline
from gateway.core.step import NEAR_EXHAUSTION, step
from protocol import messages
from protocol.messages import JsonValue, as_json

__all__ = [
    "NEAR_EXHAUSTION",
    "MeterState",
    "enrol",
    "event_body",
    "forecast",
    "next_deadline",
    "step",
]


def event_body(name: str, reason: str, **details: JsonValue) -> dict[str, JsonValue]:
    """The body of an ``event`` message as a plain dict."""
    return as_json(messages.event_body(name, reason, **details))
