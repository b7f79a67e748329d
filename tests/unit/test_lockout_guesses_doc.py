"""The guesses a year the keypad lockout allows, with and without cheap purchases in between, computed from the lockout code by playing the attacker for a year; docs/tokens.md states the same figures and the forging chance they give."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from protocol.tokens.keypad import MAC_BITS
from protocol.tokens.lockout import (
    KeypadLockout,
    LockoutPolicy,
    lockout_after_failure,
    lockout_after_success,
    lockout_allows,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "tokens.md"
START = datetime(2027, 1, 1, tzinfo=UTC)
YEAR = timedelta(days=365)
#: Typing one 20-digit entry takes at least this long (the keypad is the only way in).
TYPING = timedelta(seconds=10)


def guesses_in_a_year(policy: LockoutPolicy, *, buys_tokens: bool) -> int:
    """Wrong guesses an attacker gets in with the keypad in 365 days, guessing whenever
    the keypad takes an entry; with ``buys_tokens`` they also type a genuine (cheap) token
    whenever that could clear their failures first, as often as they like. Each entry
    takes ``TYPING``."""
    state, now, guesses = KeypadLockout(), START, 0
    while True:
        allowed = lockout_allows(state, now)
        if allowed is not True:
            now = allowed
        if now >= START + YEAR:
            return guesses
        if buys_tokens and state.failures:
            state = lockout_after_success(state, now, policy)
            now += TYPING
        state, _ = lockout_after_failure(state, now, policy)
        now += TYPING
        guesses += 1


def _doc_figure(label: str) -> int:
    match = re.search(rf"{label}: about \*\*([\d,]+) guesses a year\*\*", DOC.read_text())
    assert match is not None, f"docs/tokens.md has no '{label}: about **N guesses a year**'"
    return int(match.group(1).replace(",", ""))


def _rounded(n: int) -> int:
    """The doc states figures to the nearest ten."""
    return round(n, -1)


def test_cheap_purchases_buy_a_bounded_number_of_guesses() -> None:
    """Issue 18 item 10: a token every 15 minutes used to give ~278,000 guesses a year."""
    policy = LockoutPolicy()
    idle = guesses_in_a_year(policy, buys_tokens=False)
    buying = guesses_in_a_year(policy, buys_tokens=True)
    assert idle < buying < 2 * idle
    # Buying tokens as fast as the keypad takes them gains at most one reset a day.
    per_reset = guesses_in_a_year(LockoutPolicy(forgive_every=timedelta(0)), buys_tokens=True)
    assert per_reset > 50 * buying  # without the daily bound it is many times more


def test_docs_state_the_computed_guesses_and_chance() -> None:
    policy = LockoutPolicy()
    idle = guesses_in_a_year(policy, buys_tokens=False)
    buying = guesses_in_a_year(policy, buys_tokens=True)
    assert _doc_figure("Without purchases") == _rounded(idle)
    assert _doc_figure("Buying a genuine token whenever it helps") == _rounded(buying)
    chance = buying / 2**MAC_BITS
    text = DOC.read_text()
    assert f"{buying:,} × 2^−{MAC_BITS} ≈ **{chance:.1e} a year**".replace("e-0", " × 10^−") in text
