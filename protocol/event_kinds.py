"""Every event a meter's ``event`` topic carries: its name and what it means, in one place.

The gateway's core and the provisioning CLI publish these (and nothing else: their calls
take an :class:`EventKind`), and ``scripts/export_schemas.py`` renders :data:`MEANINGS`
into docs/mqtt.md, where a test fails if the page and this list differ.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class EventKind(StrEnum):
    RELAY_OPENED = "relay_opened"
    RELAY_CLOSED = "relay_closed"
    RELAY_MISMATCH = "relay_mismatch"
    RELAY_MISMATCH_CLEARED = "relay_mismatch_cleared"
    RELAY_UNREACHABLE = "relay_unreachable"
    CREDIT_STATE_CHANGED = "credit_state_changed"
    TOKEN_ACCEPTED = "token_accepted"  # noqa: S105 (an event name)
    TOKEN_REJECTED = "token_rejected"  # noqa: S105 (an event name)
    KEYPAD_LOCKOUT_ALARM = "keypad_lockout_alarm"
    TAMPER = "tamper"
    LOAD_LIMIT = "load_limit"
    COMMUNICATION_LOST = "communication_lost"
    COMMUNICATION_RESTORED = "communication_restored"
    COMMUNICATION_LOST_WHILE_EXHAUSTED = "communication_lost_while_exhausted"
    ENERGY_HELD = "energy_held"
    READING_INVALID = "reading_invalid"
    READING_IGNORED = "reading_ignored"
    REGISTER_BACKWARDS = "register_backwards"
    REGISTER_ROLLOVER = "register_rollover"
    STANDING_CHARGE = "standing_charge"
    TARIFF_SCHEDULED = "tariff_scheduled"
    REMOTE_COMMAND_IGNORED = "remote_command_ignored"
    METER_QUARANTINED = "meter_quarantined"
    WINDOW_DEBT_CAP = "window_debt_cap"
    CLOCK_DRIFT = "clock_drift"
    RELAY_NOT_SWITCHED = "relay_not_switched"
    KEY_CHANGED = "key_changed"
    MAX_POWER_SET = "max_power_set"
    LOAD_LIMIT_CONFIRMED = "load_limit_confirmed"
    LOAD_LIMIT_MISMATCH = "load_limit_mismatch"
    TAMPER_CLEARED = "tamper_cleared"
    EMERGENCY_CREDIT_SET = "emergency_credit_set"
    TEST_TOKEN = "test_token"  # noqa: S105 (an event name)
    COMMISSIONED = "commissioned"
    ENROLMENT_UPDATED = "enrolment_updated"
    ENROLMENT_REMOVED = "enrolment_removed"


#: One line each, as docs/mqtt.md shows them.
MEANINGS: Final[dict[EventKind, str]] = {
    EventKind.RELAY_OPENED: "the gateway opened the meter's relay (`reason` and "
    "`details.decision` say why: the rule, the balance, the window if any)",
    EventKind.RELAY_CLOSED: "the gateway closed the meter's relay",
    EventKind.RELAY_MISMATCH: "the relay does not follow the command (a relay fault); sent "
    "once when it starts, while the gateway retries with a doubling pause up to 5 minutes",
    EventKind.RELAY_MISMATCH_CLEARED: "the relay follows the command again",
    EventKind.RELAY_UNREACHABLE: "the relay module that switches a meter without a relay of "
    "its own did not answer when read with a reading: the contactor's position is unknown; "
    "once until it answers again, the meter still billed",
    EventKind.CREDIT_STATE_CHANGED: "the credit state moved (`details.from`, `to`, "
    "`trigger`, `decision`); the states are listed under *balance*",
    EventKind.TOKEN_ACCEPTED: "a token credited the meter (`details.channel`, `counter`, "
    "`amount`, `token_id`, `credited`: what reached the balance, `debt_recovered`: what "
    "went to debt first)",
    EventKind.TOKEN_REJECTED: "a token was refused (`reason`: one of the token reasons "
    "below; `details.channel`, `token_id`, `detail`)",
    EventKind.KEYPAD_LOCKOUT_ALARM: "wrong keypad tokens reached the lockout: the keypad "
    "refuses tokens for a while (someone may be guessing)",
    EventKind.TAMPER: "the meter reports tampering (`reason`: cover open, magnet, reverse "
    "energy, bypass: consumption while the relay, or the relay module's coil that switches "
    "the meter, is open)",
    EventKind.LOAD_LIMIT: "the meter tripped on its load limit",
    EventKind.COMMUNICATION_LOST: "the meter stopped answering",
    EventKind.COMMUNICATION_RESTORED: "the meter answers again",
    EventKind.COMMUNICATION_LOST_WHILE_EXHAUSTED: "an alarm: a meter that cannot cut "
    "supply by itself stopped answering near or past exhaustion; send a field visit",
    EventKind.ENERGY_HELD: "a jump beyond what the meter's rated power allows: held for "
    "review, not charged",
    EventKind.READING_INVALID: "a reply whose values no real meter reports (not a number, "
    "an energy register beyond 2^53 Wh): nothing charged; once per episode",
    EventKind.READING_IGNORED: "a reading not newer than the last one: nothing charged",
    EventKind.REGISTER_BACKWARDS: "the energy register went back (meter reset or "
    "replaced): new baseline, no refund",
    EventKind.REGISTER_ROLLOVER: "the energy register wrapped past its maximum: charged "
    "for the energy across the wrap",
    EventKind.STANDING_CHARGE: "the daily standing charges taken (`details.days`, "
    "`from_balance`, `to_debt`, `through`)",
    EventKind.TARIFF_SCHEDULED: "a new tariff was accepted (`details.activates_at`)",
    EventKind.REMOTE_COMMAND_IGNORED: "a relay command that does not apply in the meter's "
    "state (`details.request_id`)",
    EventKind.METER_QUARANTINED: "the gateway could not process this meter's events "
    "several times in a row: it stops polling it and leaves its relay as it is until the "
    "gateway restarts; see its log",
    EventKind.WINDOW_DEBT_CAP: "inside a no-disconnect window the balance reached the "
    "window's debt cap, `-(overdraft_limit + window_debt_cap)`: the meter is disconnected all "
    "the same (`details.window`, `cap`, `floor`, `balance`; the `relay_opened` that follows "
    "has rule `window_debt_cap`)",
    EventKind.CLOCK_DRIFT: "a DL/T 645 meter's clock was further off than its bus's "
    "`clock_drift_max_s` before the time broadcast (`details.drift_s`, positive ahead, "
    "`details.bound_s`)",
    EventKind.RELAY_NOT_SWITCHED: "the gateway would switch this meter but cannot: an ESAM "
    "meter, whose remote control needs the utility's security module, or one enrolled "
    "without a password (`reason` says which, `details.wanted` is `open` or `closed`); read "
    "and billed all the same, see [dlt645.md](dlt645.md)",
    EventKind.KEY_CHANGED: "a key-change token moved the meter to a new key epoch "
    "(`details.from_epoch`, `to_epoch`: tokens of older epochs are refused from now on; "
    "management tokens' `details` carry `token_id`, `channel` and `counter`)",
    EventKind.MAX_POWER_SET: "a set-maximum-power token: `details.watts` written to the "
    "meter's load limit",
    EventKind.LOAD_LIMIT_CONFIRMED: "the load limit read back as written",
    EventKind.LOAD_LIMIT_MISMATCH: "the load limit read back otherwise (`details.requested_w`, "
    "`observed_w`: null when the write or read failed)",
    EventKind.TAMPER_CLEARED: "a clear-tamper token (`details.mask`, `cleared`: the flags "
    "cleared; a tamper still present is reported again at the next reading)",
    EventKind.EMERGENCY_CREDIT_SET: "a set-emergency-credit token (`details.emergency_credit`, "
    "`previous`, minor units)",
    EventKind.TEST_TOKEN: "a test token typed or sent (`details.code`; no counter used)",
    EventKind.COMMISSIONED: "queued by `meter-provision commission`: `reason` pass or "
    "fail, `details.checks`",
    EventKind.ENROLMENT_UPDATED: "queued by `meter-provision enrol --update`: "
    '`details.changed` (the new values, a new key as `"replaced"`), '
    "`details.commissioning_needed`",
    EventKind.ENROLMENT_REMOVED: "queued by `meter-provision enrol --remove`, the meter's "
    "last event: `details.balance`, `debt`, `currency` when removed (enrolled again, it "
    "goes on from the `seq` its messages reached while the gateway still holds them)",
}
