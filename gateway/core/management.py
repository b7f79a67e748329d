"""What a verified management token does to a meter (set maximum power, clear tamper,
set emergency credit, key change, test), and the load limit read back. Pure.

Each accepted token is reported as an event the headend sees; all but the test token
use their purchase counter (a ``TopUpDecision`` with nothing credited, committed with
the new state). The key change itself (new key, fresh counter window) is the shell's to
commit: the core only reports it.
"""

from __future__ import annotations

from dataclasses import replace

from gateway.core.commands import DisplayCode, SetLoadLimit, TopUpDecision
from gateway.core.events import LoadLimitObserved, ManagementTokenAccepted
from gateway.core.step_run import StepRun
from protocol.event_kinds import EventKind
from protocol.messages import JsonValue
from protocol.tokens.errors import GatewayRefusal
from protocol.tokens.token_class import TokenClass, tamper_flags_of_mask


def apply_management_token(run: StepRun, event: ManagementTokenAccepted) -> None:
    """Carry out one verified management token."""
    meter = run.state.meter_id
    details: dict[str, JsonValue] = {
        "token_id": event.token_id,
        "channel": event.channel,
        "counter": event.counter,
    }
    match TokenClass[event.token_class.upper().replace("-", "_")]:
        case TokenClass.TEST:
            run.publish_event(
                EventKind.TEST_TOKEN, "test token entered", code=event.value, **details
            )
            run.display = DisplayCode.TEST_TOKEN
            return  # no counter used: a test token can be entered again
        case TokenClass.SET_MAX_POWER:
            run.commands.append(SetLoadLimit(meter, event.value))
            run.publish_event(
                EventKind.MAX_POWER_SET, "set maximum power token", watts=event.value, **details
            )
        case TokenClass.CLEAR_TAMPER:
            named = tamper_flags_of_mask(event.value)
            cleared = sorted(run.state.flags & set(named))
            run.state = replace(run.state, flags=run.state.flags - set(named))
            run.publish_event(
                EventKind.TAMPER_CLEARED,
                "clear tamper token: a tamper still present is reported again at the next reading",
                mask=event.value,
                cleared=list(cleared),
                **details,
            )
        case TokenClass.SET_EMERGENCY_CREDIT:
            previous = run.settings.overdraft_limit
            try:
                settings = replace(run.settings, overdraft_limit=event.value)
            except ValueError as exc:
                run.commands.append(
                    TopUpDecision(
                        meter, event.token_id, False, GatewayRefusal.INVALID_EMERGENCY_CREDIT
                    )
                )
                run.publish_event(
                    EventKind.TOKEN_REJECTED,
                    GatewayRefusal.INVALID_EMERGENCY_CREDIT,
                    detail=str(exc),
                    **details,
                )
                run.display = DisplayCode.TOKEN_REJECTED
                return
            run.state = replace(run.state, settings=settings)
            run.publish_event(
                EventKind.EMERGENCY_CREDIT_SET,
                "set emergency credit token",
                emergency_credit=event.value,
                previous=previous,
                **details,
            )
        case TokenClass.KEY_CHANGE:
            run.publish_event(
                EventKind.KEY_CHANGED,
                "key change token: tokens of older key epochs are refused from now on",
                from_epoch=event.epoch,
                to_epoch=event.value,
                **details,
            )
        case TokenClass.CREDIT:  # pragma: no cover  (credit is a TopUpAccepted)
            raise ValueError("a credit token is not a management token")
    run.commands.append(TopUpDecision(meter, event.token_id, True, "accepted"))
    run.display = DisplayCode.TOKEN_ACCEPTED


def load_limit_observed(run: StepRun, event: LoadLimitObserved) -> None:
    """The load limit as read back after it was written: confirmed, or a mismatch."""
    if event.observed_w == event.requested_w:
        run.publish_event(EventKind.LOAD_LIMIT_CONFIRMED, "read back", watts=event.observed_w)
        return
    run.publish_event(
        EventKind.LOAD_LIMIT_MISMATCH,
        event.error or "the meter holds another load limit than was written",
        requested_w=event.requested_w,
        observed_w=event.observed_w,
    )
