"""From a typed keypad entry or an online token to a core event, with replay window and
keypad lockout applied. Pure: the core task calls these with the meter's current window,
keypad guard and keys, and commits what they return together with the credit.

A keypad entry carries the meter's keypad sequence number; the last one consumed is
stored with the lockout in the same transaction as the credit, so an entry seen again
after a crash (applied, not yet acknowledged) is acknowledged without being applied or
refused a second time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.core.commands import TopUpDecision
from gateway.core.events import Event, ManagementTokenAccepted, TokenRejected, TopUpAccepted
from protocol.messages import JsonValue
from protocol.tokens.errors import GatewayRefusal, RejectReason, TokenRefusal
from protocol.tokens.keypad import verify_keypad
from protocol.tokens.keys import MeterKey
from protocol.tokens.lockout import (
    KeypadLockout,
    LockoutPolicy,
    lockout_after_failure,
    lockout_after_success,
    lockout_allows,
)
from protocol.tokens.online import verify_online
from protocol.tokens.replay import ReplayWindow
from protocol.tokens.results import Accepted, Channel, Rejected
from protocol.tokens.token_class import TokenClass

POLICY = LockoutPolicy()


@dataclass(frozen=True, slots=True)
class KeypadEntry:
    """A completed keypad entry seen in a reading (status bit 3 pending)."""

    meter_id: str
    seq: int
    digits: str
    at: datetime


@dataclass(frozen=True, slots=True)
class OnlineTopUp:
    """An online token the headend sent over MQTT for this meter."""

    meter_id: str
    token: str
    at: datetime


@dataclass(frozen=True, slots=True)
class KeypadGuard:
    """What guards one meter's keypad: its lockout, and the last entry consumed (so an
    entry seen again after a crash is acknowledged, not applied twice)."""

    keypad: KeypadLockout
    consumed_seq: int | None = None

    @classmethod
    def from_stored(cls, stored: Mapping[str, JsonValue] | None) -> KeypadGuard:
        if not stored:
            return cls(KeypadLockout())
        inner = stored.get("keypad")
        seq = stored.get("consumed_seq")
        return cls(
            KeypadLockout.from_dict(cast("dict[str, int | str | None]", inner))
            if isinstance(inner, dict)
            else KeypadLockout(),
            seq if isinstance(seq, int) else None,
        )

    def to_dict(self) -> dict[str, JsonValue]:
        keypad: dict[str, JsonValue] = dict(self.keypad.to_dict())
        return {"keypad": keypad, "consumed_seq": self.consumed_seq}


@dataclass(frozen=True, slots=True)
class MeterAbilities:
    """What a meter can take of the management tokens: the key epochs the gateway holds
    a key for (a key change moves only to one of them, as a 20-digit token cannot carry
    a key), and the largest load limit its map's register holds, in W (None: it has no
    load-limit register)."""

    held_epochs: frozenset[int] = field(default_factory=frozenset)
    load_limit_max_w: int | None = None


@dataclass(frozen=True, slots=True)
class TokenOutcome:
    """What a token led to, before the core decides on its money."""

    event: Event | None
    #: ``accepted``, ``already_consumed`` (an entry seen again after a crash) or a refusal
    verdict: Literal["accepted", "already_consumed"] | TokenRefusal
    window: ReplayWindow | None = None
    lockout: KeypadGuard | None = None
    ack_keypad_seq: int | None = None
    alarm: bool = False
    credited: int = 0
    accepted: bool = False
    detail: str = ""
    #: a key change: the key epoch the meter moves to once this is committed
    key_epoch: int | None = None

    def with_decision(self, decision: TopUpDecision | None) -> TokenOutcome:
        """The outcome after the core's decision on the money (max balance...)."""
        if decision is None:
            return self
        return replace(
            self,
            accepted=decision.accepted,
            verdict="accepted" if decision.accepted else decision.reason,
            credited=decision.credited,
        )


def _rejected_event(
    meter_id: str,
    reason: TokenRefusal,
    channel: Channel,
    at: datetime,
    *,
    detail: str = "",
    alarm: bool = False,
) -> TokenRejected:
    return TokenRejected(
        meter_id, reason, channel.value, at, detail=detail[:200], lockout_alarm=alarm
    )


def _credit_event(accepted: Accepted, at: datetime) -> TopUpAccepted:
    return TopUpAccepted(
        accepted.meter_id,
        accepted.amount,
        accepted.counter,
        accepted.token_id,
        accepted.channel.value,
        at,
    )


def intake_keypad(  # noqa: PLR0917  (the core task's one call)
    entry: KeypadEntry,
    key: MeterKey,
    window: ReplayWindow,
    lockout: KeypadGuard,
    currency: str,
    abilities: MeterAbilities | None = None,
) -> TokenOutcome:
    """Verify a keypad entry under the lockout; the window to record if it is credited."""
    del currency  # keypad tokens carry no currency: they are bound to the meter's own
    if lockout.consumed_seq == entry.seq:
        return TokenOutcome(None, "already_consumed", ack_keypad_seq=entry.seq)
    consumed = replace(lockout, consumed_seq=entry.seq)
    allowed = lockout_allows(lockout.keypad, entry.at)
    if allowed is not True:
        detail = f"retry after {allowed.isoformat()}"
        return TokenOutcome(
            _rejected_event(
                entry.meter_id, GatewayRefusal.LOCKED_OUT, Channel.KEYPAD, entry.at, detail=detail
            ),
            GatewayRefusal.LOCKED_OUT,
            lockout=consumed,
            ack_keypad_seq=entry.seq,
            detail=detail,
        )
    verdict = verify_keypad(entry.digits, entry.meter_id, key, window)
    return _outcome(
        verdict,
        meter_id=entry.meter_id,
        channel=Channel.KEYPAD,
        window=window,
        lockout=consumed,
        at=entry.at,
        seq=entry.seq,
        abilities=abilities or MeterAbilities(),
    )


def _unable(verdict: Accepted, abilities: MeterAbilities) -> tuple[GatewayRefusal, str] | None:
    """Why this meter cannot carry out a genuine management token (reason, detail), or
    None. The counter stays unused, so the token works once the meter can."""
    if verdict.token_class is TokenClass.KEY_CHANGE and verdict.amount not in abilities.held_epochs:
        return GatewayRefusal.KEY_NOT_HELD, (
            f"no key of epoch {verdict.amount} for this meter: install it first "
            "(meter-provision keys install)"
        )
    if verdict.token_class is TokenClass.SET_MAX_POWER:
        largest = abilities.load_limit_max_w
        if largest is None:
            return GatewayRefusal.NO_LOAD_LIMIT, (
                "this meter's register map has no load_limit register"
            )
        if verdict.amount > largest:
            return GatewayRefusal.LOAD_LIMIT_OUT_OF_RANGE, (
                f"{verdict.amount} W is above the {largest} W this meter's load_limit "
                "register holds"
            )
    return None


def _management_outcome(
    verdict: Accepted,
    *,
    channel: Channel,
    window: ReplayWindow,
    lockout: KeypadGuard,
    at: datetime,
    seq: int | None,
    abilities: MeterAbilities,
) -> TokenOutcome:
    meter_id = verdict.meter_id
    unable = _unable(verdict, abilities)
    if unable is not None:
        reason, detail = unable
        return TokenOutcome(
            _rejected_event(meter_id, reason, channel, at, detail=detail),
            reason,
            lockout=lockout,
            ack_keypad_seq=seq,
            detail=detail,
        )
    event = ManagementTokenAccepted(
        meter_id,
        verdict.token_class.cli_name,
        verdict.amount,
        verdict.counter,
        verdict.token_id,
        channel.value,
        at,
        verdict.epoch,
    )
    if verdict.token_class is TokenClass.TEST:
        # No counter used, and no lockout forgiven: a test token can be typed again and
        # again, so it must not clear an attacker's failures.
        return TokenOutcome(event, "accepted", lockout=lockout, ack_keypad_seq=seq, accepted=True)
    keypad = lockout.keypad
    if channel is Channel.KEYPAD:
        keypad = lockout_after_success(keypad, at, POLICY)
    key_change = verdict.token_class is TokenClass.KEY_CHANGE
    return TokenOutcome(
        event,
        "accepted",
        # A key change starts the new epoch's counters afresh: every older token fails.
        window=ReplayWindow.fresh(verdict.amount) if key_change else window.record(verdict.counter),
        lockout=replace(lockout, keypad=keypad),
        ack_keypad_seq=seq,
        key_epoch=verdict.amount if key_change else None,
    )


def _outcome(
    verdict: Accepted | Rejected,
    *,
    meter_id: str,
    channel: Channel,
    window: ReplayWindow,
    lockout: KeypadGuard,
    at: datetime,
    seq: int | None,
    abilities: MeterAbilities,
) -> TokenOutcome:
    if isinstance(verdict, Rejected):
        alarm = False
        keypad = lockout.keypad
        if verdict.counts_toward_lockout and channel is Channel.KEYPAD:
            keypad, alarm = lockout_after_failure(keypad, at, POLICY)
        reason = verdict.reason
        return TokenOutcome(
            _rejected_event(meter_id, reason, channel, at, detail=verdict.detail, alarm=alarm),
            reason,
            lockout=replace(lockout, keypad=keypad),
            ack_keypad_seq=seq,
            alarm=alarm,
            detail=verdict.detail,
        )
    if verdict.token_class is not TokenClass.CREDIT:
        return _management_outcome(
            verdict,
            channel=channel,
            window=window,
            lockout=lockout,
            at=at,
            seq=seq,
            abilities=abilities,
        )
    keypad = (
        lockout_after_success(lockout.keypad, at, POLICY)
        if channel is Channel.KEYPAD
        else lockout.keypad
    )
    return TokenOutcome(
        _credit_event(verdict, at),
        "accepted",
        window=window.record(verdict.counter),
        lockout=replace(lockout, keypad=keypad),
        ack_keypad_seq=seq,
    )


def intake_online(
    top_up: OnlineTopUp,
    public_keys: Mapping[str, Ed25519PublicKey],
    *,
    window: ReplayWindow,
    currency: str,
    now: datetime,
    lockout: KeypadGuard | None = None,
    abilities: MeterAbilities | None = None,
) -> TokenOutcome:
    """Verify an online token for this meter (signature by one of the vending service's
    ``public_keys``, expiry, window, currency). A management token online is the signed
    twin of its keypad token: the same counter, the same effect."""
    state = lockout or KeypadGuard(KeypadLockout())
    verdict = verify_online(top_up.token, top_up.meter_id, public_keys, window, now)
    if isinstance(verdict, Accepted) and verdict.currency not in (None, currency):
        verdict = Rejected(
            RejectReason.AMOUNT_OUT_OF_RANGE, f"currency {verdict.currency}, meter uses {currency}"
        )
    return _outcome(
        verdict,
        meter_id=top_up.meter_id,
        channel=Channel.ONLINE,
        window=window,
        lockout=state,
        at=top_up.at,
        seq=None,
        abilities=abilities or MeterAbilities(),
    )
