"""Keypad lockout: free failures, doubling delay to a cap, forgiven by a valid token at most once a day (so cheap purchases buy no guesses: the guesses a year in docs/tokens.md are computed here), typos never count, the alarm fires on repeated failures in a day, and the state round-trips through storage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.tokens import Accepted, Channel, Rejected, RejectReason, TokenClass
from protocol.tokens.lockout import (
    KeypadLockout,
    LockoutPolicy,
    lockout_after_failure,
    lockout_after_success,
    lockout_after_verdict,
    lockout_allows,
)

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
POLICY = LockoutPolicy()
FORGED = Rejected(RejectReason.WRONG_METER_OR_FORGED)
OK = Accepted("PE1-000042", TokenClass.CREDIT, 1, 100, 0, Channel.KEYPAD)


def test_free_failures_then_doubling_delay_up_to_the_cap() -> None:
    state = KeypadLockout()
    delays = []
    for _ in range(12):
        state, _ = lockout_after_failure(state, T0, POLICY)
        retry = lockout_allows(state, T0)
        delays.append(timedelta(0) if retry is True else retry - T0)
    seconds = [int(d.total_seconds()) for d in delays]
    assert seconds == [0, 0, 0, 30, 60, 120, 240, 480, 960, 1920, 3600, 3600]


def test_lock_expires_at_its_time() -> None:
    state = KeypadLockout()
    for _ in range(4):
        state, _ = lockout_after_failure(state, T0, POLICY)
    assert lockout_allows(state, T0 + timedelta(seconds=29)) == T0 + timedelta(seconds=30)
    assert lockout_allows(state, T0 + timedelta(seconds=30)) is True


def test_only_a_valid_token_clears_the_lock() -> None:
    state = KeypadLockout()
    for _ in range(6):
        state, _ = lockout_after_verdict(state, FORGED, T0, POLICY)
    locked = state
    state, _ = lockout_after_verdict(state, Rejected(RejectReason.TYPO), T0, POLICY)
    assert state == locked
    state, alarm = lockout_after_verdict(state, OK, T0, POLICY)
    assert not alarm
    assert state.failures == 0
    assert lockout_allows(state, T0) is True
    assert state.day_failures == 6  # the day's tally stays for the alarm
    assert state.forgiven_at == T0.isoformat()


def test_a_second_valid_token_within_a_day_forgives_nothing() -> None:
    """Issue 18 item 10: each cheap purchase used to restore three free guesses."""
    state = KeypadLockout()
    for _ in range(4):
        state, _ = lockout_after_failure(state, T0, POLICY)
    state = lockout_after_success(state, T0, POLICY)
    assert state.failures == 0
    later = T0 + timedelta(minutes=15)
    for _ in range(4):
        state, _ = lockout_after_failure(state, later, POLICY)
    again = lockout_after_success(state, later + timedelta(seconds=10), POLICY)
    assert again == state  # still 4 failures, still locked
    assert lockout_allows(again, later + timedelta(seconds=10)) is not True
    next_day = T0 + POLICY.forgive_every
    forgiven = lockout_after_success(state, next_day, POLICY)
    assert (forgiven.failures, forgiven.locked_until) == (0, None)


def test_a_valid_token_on_a_clean_keypad_spends_no_forgiveness() -> None:
    state = lockout_after_success(KeypadLockout(), T0, POLICY)
    assert state == KeypadLockout()


def test_typos_never_count() -> None:
    state = KeypadLockout()
    for _ in range(1000):
        state, alarm = lockout_after_verdict(state, Rejected(RejectReason.TYPO), T0, POLICY)
        assert not alarm
    assert state == KeypadLockout()


@pytest.mark.parametrize("reason", [r for r in RejectReason if r is not RejectReason.TYPO])
def test_every_other_reason_counts(reason: RejectReason) -> None:
    state, _ = lockout_after_verdict(KeypadLockout(), Rejected(reason), T0, POLICY)
    assert state.failures == 1


def test_alarm_on_every_tenth_failure_in_a_day_and_the_day_rolls() -> None:
    state = KeypadLockout()
    alarms = []
    for i in range(25):
        state, alarm = lockout_after_failure(state, T0 + timedelta(minutes=i), POLICY)
        state = lockout_after_success(state, T0 + timedelta(days=i), POLICY)
        alarms.append(alarm)
    assert [i + 1 for i, a in enumerate(alarms) if a] == [10, 20]
    state, alarm = lockout_after_failure(state, T0 + timedelta(days=1, minutes=1), POLICY)
    assert (state.day_failures, alarm) == (1, False)


def test_state_survives_storage() -> None:
    state = KeypadLockout()
    for _ in range(5):
        state, _ = lockout_after_failure(state, T0, POLICY)
    assert KeypadLockout.from_dict(state.to_dict()) == state
    assert lockout_allows(KeypadLockout.from_dict(state.to_dict()), T0) == T0 + timedelta(minutes=1)


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"failures": 0, "locked_until": None, "day_started": None},
        {"failures": "1", "locked_until": None, "day_started": None, "day_failures": 0},
        {"failures": 0, "locked_until": 5, "day_started": None, "day_failures": 0},
        {"failures": 0, "locked_until": "yesterday", "day_started": None, "day_failures": 0},
        {
            "failures": 0,
            "locked_until": "2026-11-28T12:00:00",
            "day_started": None,
            "day_failures": 0,
        },
        {"failures": -1, "locked_until": None, "day_started": None, "day_failures": 0},
        {
            "failures": 0,
            "locked_until": None,
            "day_started": None,
            "day_failures": 0,
            "forgiven_at": None,
        },
    ],
)
def test_bad_stored_state_is_refused(data: dict[str, int | str | None]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011  (each case has its own message)
        KeypadLockout.from_dict(data)


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        lockout_after_failure(KeypadLockout(), datetime(2026, 1, 1), POLICY)  # noqa: DTZ001


@given(st.lists(st.sampled_from(list(RejectReason)) | st.just(None), max_size=60))
def test_delay_never_exceeds_the_cap(reasons: list[RejectReason | None]) -> None:
    state = KeypadLockout()
    now = T0
    for reason in reasons:
        verdict = OK if reason is None else Rejected(reason)
        state, _ = lockout_after_verdict(state, verdict, now, POLICY)
        retry = lockout_allows(state, now)
        assert retry is True or retry - now <= POLICY.max_delay
        now += timedelta(seconds=7)


json_values = st.none() | st.booleans() | st.integers() | st.text(max_size=40)


@given(
    st.dictionaries(
        st.sampled_from(
            ["failures", "locked_until", "day_started", "day_failures", "forgiven_at", "x"]
        ),
        json_values,
    )
    | st.fixed_dictionaries(
        {
            "failures": json_values,
            "locked_until": json_values,
            "day_started": json_values,
            "day_failures": json_values,
        }
    )
)
def test_from_dict_accepts_only_what_to_dict_makes(data: dict[str, Any]) -> None:
    try:
        state = KeypadLockout.from_dict(data)
    except ValueError:
        return
    assert state.to_dict() == data
