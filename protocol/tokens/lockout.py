"""Keypad lockout: a few free failures, then a doubling delay up to a cap, forgiven by a
valid token at most once per ``forgive_every`` (so a cheap purchase cannot buy guesses),
and an alarm for the headend after repeated failures in a day.

Pure data in, pure data out: the gateway stores :class:`KeypadLockout` (``to_dict``) per
meter so a restart does not hand an attacker a fresh set of guesses. A TYPO is not a
failure (a mistyped token cannot be accepted by chance): use :func:`lockout_after_verdict`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, cast

from protocol.tokens.results import Accepted, Rejected

_DAY = timedelta(days=1)
_MAX_DOUBLINGS = 32


@dataclass(frozen=True, slots=True)
class LockoutPolicy:
    """Defaults: 3 free failures, then 30 s, 60 s, 120 s, ... capped at 1 h; a valid
    keypad token forgives the failures at most once in 24 h; an alarm at every 10th
    failure inside 24 h. The guesses a year this allows, with and without purchases, are
    in docs/tokens.md section 7 (computed from this code by a test)."""

    free_failures: int = 3
    first_delay: timedelta = timedelta(seconds=30)
    max_delay: timedelta = timedelta(hours=1)
    alarm_every: int = 10
    #: A valid token clears the failures only if the last one that did was at least this
    #: long ago: a purchase every few minutes must not hand out free guesses each time.
    forgive_every: timedelta = timedelta(hours=24)

    def __post_init__(self) -> None:
        if self.free_failures < 0 or self.alarm_every < 1:
            raise ValueError("free_failures must be >= 0 and alarm_every >= 1")
        if not timedelta(0) < self.first_delay <= self.max_delay:
            raise ValueError("need 0 < first_delay <= max_delay")
        if self.forgive_every < timedelta(0):
            raise ValueError("forgive_every must be >= 0")

    def delay_after(self, failures: int) -> timedelta:
        """The lock after ``failures`` consecutive failures (zero while still free)."""
        excess = failures - self.free_failures
        if excess <= 0:
            return timedelta(0)
        return min(self.first_delay * (1 << min(excess - 1, _MAX_DOUBLINGS)), self.max_delay)


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError(f"lockout times must be timezone-aware: {now!r}")
    return now


def _parse(text: str | None) -> datetime | None:
    return None if text is None else _aware(datetime.fromisoformat(text))


@dataclass(frozen=True, slots=True)
class KeypadLockout:
    """One meter's keypad lockout. ``failures``: counted failures since the last valid
    token that forgave them; ``locked_until``: ISO time before which entries are refused
    unread; ``day_started``/``day_failures``: the 24-hour window the alarm counts in (a
    valid token does not reset it); ``forgiven_at``: when a valid token last cleared the
    failures (None: never)."""

    failures: int = 0
    locked_until: str | None = None
    day_started: str | None = None
    day_failures: int = 0
    forgiven_at: str | None = None

    def __post_init__(self) -> None:
        if self.failures < 0 or self.day_failures < 0:
            raise ValueError("failure counts cannot be negative")
        _parse(self.locked_until)
        _parse(self.day_started)
        _parse(self.forgiven_at)

    def to_dict(self) -> dict[str, int | str | None]:
        """Plain JSON; ``forgiven_at`` only once set, so a state written before it existed
        reads back unchanged."""
        data: dict[str, int | str | None] = {
            "failures": self.failures,
            "locked_until": self.locked_until,
            "day_started": self.day_started,
            "day_failures": self.day_failures,
        }
        if self.forgiven_at is not None:
            data["forgiven_at"] = self.forgiven_at
        return data

    @classmethod
    def from_dict(cls, data: dict[str, int | str | None]) -> KeypadLockout:
        """Inverse of :meth:`to_dict`; ``ValueError`` on anything else."""
        base = {"failures", "locked_until", "day_started", "day_failures"}
        if set(data) not in (base, base | {"forgiven_at"}):
            raise ValueError(f"not a lockout state: {sorted(data)}")
        failures, day_failures = data["failures"], data["day_failures"]
        locked_until, day_started = data["locked_until"], data["day_started"]
        forgiven_at = data.get("forgiven_at")
        if type(failures) is not int or type(day_failures) is not int:
            raise ValueError("failure counts must be ints")
        if not isinstance(locked_until, str | None) or not isinstance(day_started, str | None):
            raise ValueError("times must be ISO strings or null")
        if "forgiven_at" in data and not isinstance(forgiven_at, str):
            raise ValueError("forgiven_at must be an ISO string when present")
        return cls(
            failures, locked_until, day_started, day_failures, cast("str | None", forgiven_at)
        )


def lockout_allows(state: KeypadLockout, now: datetime) -> Literal[True] | datetime:
    """``True`` when an entry may be checked now, else the time to retry after."""
    until = _parse(state.locked_until)
    if until is not None and _aware(now) < until:
        return until
    return True


def lockout_after_failure(
    state: KeypadLockout, now: datetime, policy: LockoutPolicy
) -> tuple[KeypadLockout, bool]:
    """The state after one counted failure, and whether to raise the alarm event."""
    now = _aware(now)
    failures = state.failures + 1
    delay = policy.delay_after(failures)
    locked_until = (now + delay).isoformat() if delay else None
    started = _parse(state.day_started)
    day_started: str | None = now.isoformat()
    day_failures = 1
    if started is not None and started <= now < started + _DAY:
        day_started, day_failures = state.day_started, state.day_failures + 1
    alarm = day_failures % policy.alarm_every == 0
    failed = KeypadLockout(failures, locked_until, day_started, day_failures, state.forgiven_at)
    return failed, alarm


def lockout_after_success(
    state: KeypadLockout, now: datetime, policy: LockoutPolicy
) -> KeypadLockout:
    """A valid token clears the failures and the lock, unless a valid token already did
    within ``policy.forgive_every``: then it changes nothing, so buying a cheap token again
    and again buys no guesses. The day's tally stays for the alarm."""
    now = _aware(now)
    if state.failures == 0 and state.locked_until is None:
        return state
    last = _parse(state.forgiven_at)
    if last is not None and last <= now < last + policy.forgive_every:
        return state
    return KeypadLockout(0, None, state.day_started, state.day_failures, now.isoformat())


def lockout_after_verdict(
    state: KeypadLockout, verdict: Accepted | Rejected, now: datetime, policy: LockoutPolicy
) -> tuple[KeypadLockout, bool]:
    """Apply one keypad verdict: success forgives (at most once per ``forgive_every``), a
    TYPO changes nothing, others count."""
    if isinstance(verdict, Accepted):
        return lockout_after_success(state, now, policy), False
    if not verdict.counts_toward_lockout:
        return state, False
    return lockout_after_failure(state, now, policy)
