"""Keypad tokens credit only the meter they were made for, once; typos are caught as TYPO; forged, reserved and out-of-range tokens are refused with their reason."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.tokens import (
    Accepted,
    Channel,
    Rejected,
    RejectReason,
    ReplayWindow,
    TokenClass,
    derive_meter_key,
    group_digits,
    issue_keypad,
    verify_keypad,
)
from protocol.tokens.checkdigit import damm_check_digit
from protocol.tokens.keypad import keypad_mac, mac_message, pack_payload, payload_digits

VENDING = bytes.fromhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
METER_A = "PE1-000042"
METER_B = "PE1-000043"
KEY_A = derive_meter_key(VENDING, METER_A, 0)
KEY_B = derive_meter_key(VENDING, METER_B, 0)
FRESH = ReplayWindow.fresh(0)


def credit(counter: int, amount: int = 1250, meter: str = METER_A, epoch: int = 0) -> str:
    return issue_keypad(VENDING, meter, epoch, TokenClass.CREDIT, counter, amount)


def test_valid_token_is_accepted_with_its_fields() -> None:
    digits = credit(7, 1250)
    assert len(digits) == 20
    assert digits.isdigit()
    result = verify_keypad(digits, METER_A, KEY_A, FRESH)
    assert result == Accepted(METER_A, TokenClass.CREDIT, 7, 1250, 0, Channel.KEYPAD)
    assert isinstance(result, Accepted)
    assert result.token_id == "PE1-000042:0:7"


def test_grouped_entry_with_spaces_is_accepted() -> None:
    digits = credit(3)
    assert isinstance(verify_keypad(group_digits(digits), METER_A, KEY_A, FRESH), Accepted)
    assert group_digits(digits).count(" ") == 4


def test_meter_key_and_vending_key_issue_the_same_token() -> None:
    assert issue_keypad(KEY_A, METER_A, 0, TokenClass.CREDIT, 9, 500) == credit(9, 500)


@pytest.mark.parametrize("counter", [0, 1, 65535])
def test_token_for_meter_a_fails_on_meter_b(counter: int) -> None:
    digits = credit(counter)
    assert verify_keypad(digits, METER_B, KEY_B, FRESH) == Rejected(
        RejectReason.WRONG_METER_OR_FORGED
    )
    # Even a gateway that wrongly holds A's key for B: the meter id is under the MAC.
    assert verify_keypad(digits, METER_B, KEY_A, FRESH) == Rejected(
        RejectReason.WRONG_METER_OR_FORGED
    )


def test_token_of_another_epoch_fails() -> None:
    digits = credit(1, epoch=1)
    assert verify_keypad(digits, METER_A, KEY_A, FRESH) == Rejected(
        RejectReason.WRONG_METER_OR_FORGED
    )
    key1 = derive_meter_key(VENDING, METER_A, 1)
    assert isinstance(verify_keypad(digits, METER_A, key1, ReplayWindow.fresh(1)), Accepted)
    assert verify_keypad(credit(1), METER_A, key1, ReplayWindow.fresh(1)) == Rejected(
        RejectReason.WRONG_METER_OR_FORGED
    )


def test_every_replay_fails() -> None:
    window = FRESH
    tokens = [credit(c) for c in range(70)]
    for digits in tokens:
        result = verify_keypad(digits, METER_A, KEY_A, window)
        assert isinstance(result, Accepted)
        window = window.record(result.counter)
    for counter, digits in enumerate(tokens):
        result = verify_keypad(digits, METER_A, KEY_A, window)
        expected = RejectReason.TOO_OLD if 69 - counter > 64 else RejectReason.REPLAYED
        assert result == Rejected(expected, f"counter {counter}")


def test_tokens_inside_the_window_are_accepted_out_of_order_exactly_once() -> None:
    order = list(range(64, -1, -1))  # 64 first, then every counter below it, descending
    random.Random(4).shuffle(order[1:])
    window = FRESH
    for counter in order:
        result = verify_keypad(credit(counter), METER_A, KEY_A, window)
        assert isinstance(result, Accepted), (counter, result)
        window = window.record(counter)
        again = verify_keypad(credit(counter), METER_A, KEY_A, window)
        assert isinstance(again, Rejected)
        assert again.reason is RejectReason.REPLAYED


def _single_digit_changes(digits: str) -> list[str]:
    return [
        digits[:i] + d + digits[i + 1 :]
        for i in range(len(digits))
        for d in "0123456789"
        if d != digits[i]
    ]


def _adjacent_swaps(digits: str) -> list[str]:
    return [
        digits[:i] + digits[i + 1] + digits[i] + digits[i + 2 :]
        for i in range(len(digits) - 1)
        if digits[i] != digits[i + 1]
    ]


@pytest.mark.parametrize("counter", [0, 1, 4242, 65535])
def test_every_single_digit_change_and_adjacent_swap_is_a_typo(counter: int) -> None:
    digits = credit(counter, 1_234_500)
    variants = _single_digit_changes(digits) + _adjacent_swaps(digits)
    assert len(variants) >= 180
    for typo in variants:
        result = verify_keypad(typo, METER_A, KEY_A, FRESH)
        assert isinstance(result, Rejected)
        assert result.reason is RejectReason.TYPO, typo
        assert not result.counts_toward_lockout


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("1234", RejectReason.TYPO),
        ("0" * 21, RejectReason.TYPO),
        ("", RejectReason.TYPO),
        ("1234 5678 9012 3456 789x", RejectReason.MALFORMED),
        ("１２３４５６７８９０１２３４５６７８９０", RejectReason.MALFORMED),
    ],
)
def test_incomplete_or_non_digit_entries(entry: str, reason: RejectReason) -> None:
    result = verify_keypad(entry, METER_A, KEY_A, FRESH)
    assert isinstance(result, Rejected)
    assert result.reason is reason


def test_payload_above_63_bits_is_malformed() -> None:
    body = "9" * 19
    assert verify_keypad(body + damm_check_digit(body), METER_A, KEY_A, FRESH) == Rejected(
        RejectReason.MALFORMED, "payload above 63 bits"
    )


def _forge_with_key(kind: int, counter: int, field: int, epoch: int = 0) -> str:
    """A token with a correct MAC but a field the vending side never issues."""
    mac = keypad_mac(KEY_A, mac_message(METER_A, epoch, kind, counter, field))
    return payload_digits(pack_payload(kind, counter, field, mac))


@pytest.mark.parametrize(
    ("kind", "field", "reason"),
    [
        (2, 0, RejectReason.MALFORMED),  # reserved kind
        (3, 0, RejectReason.MALFORMED),
        (1, 5 << 13, RejectReason.MALFORMED),  # reserved management sub-type
        (1, 7 << 13, RejectReason.MALFORMED),
        (0, 0, RejectReason.AMOUNT_OUT_OF_RANGE),  # zero credit
        (0, (3 << 14) | 10001, RejectReason.AMOUNT_OUT_OF_RANGE),  # 100,010.00
        (1, (3 << 13) | 0, RejectReason.AMOUNT_OUT_OF_RANGE),  # key change to epoch 0
    ],
)
def test_authentic_but_invalid_fields_are_refused(
    kind: int, field: int, reason: RejectReason
) -> None:
    result = verify_keypad(_forge_with_key(kind, 5, field), METER_A, KEY_A, FRESH)
    assert isinstance(result, Rejected)
    assert result.reason is reason
    assert result.counts_toward_lockout


@pytest.mark.parametrize(
    ("token_class", "value"),
    [
        (TokenClass.CREDIT, 1),
        (TokenClass.CREDIT, 10_000_000),
        (TokenClass.SET_MAX_POWER, 0),
        (TokenClass.SET_MAX_POWER, 81_910),
        (TokenClass.CLEAR_TAMPER, 0),
        (TokenClass.CLEAR_TAMPER, 0b101),
        (TokenClass.SET_EMERGENCY_CREDIT, 500),
        (TokenClass.KEY_CHANGE, 1),
        (TokenClass.KEY_CHANGE, 8191),
        (TokenClass.TEST, 3),
    ],
)
def test_every_class_round_trips(token_class: TokenClass, value: int) -> None:
    digits = issue_keypad(VENDING, METER_A, 0, token_class, 11, value)
    result = verify_keypad(digits, METER_A, KEY_A, FRESH)
    assert result == Accepted(METER_A, token_class, 11, value, 0, Channel.KEYPAD)


@pytest.mark.parametrize(
    ("token_class", "value"),
    [
        (TokenClass.CREDIT, 0),
        (TokenClass.CREDIT, 10_000_010),
        (TokenClass.CREDIT, 16_389),  # not exact: the caller must round down first
        (TokenClass.SET_MAX_POWER, 12_345),
        (TokenClass.SET_MAX_POWER, 81_920),
        (TokenClass.KEY_CHANGE, 0),
        (TokenClass.TEST, 8192),
    ],
)
def test_vending_refuses_values_the_keypad_cannot_carry(
    token_class: TokenClass, value: int
) -> None:
    with pytest.raises(ValueError, match=r"range|exact|steps"):
        issue_keypad(VENDING, METER_A, 0, token_class, 1, value)


def test_key_change_must_move_forward() -> None:
    key2 = derive_meter_key(VENDING, METER_A, 2)
    digits = issue_keypad(key2, METER_A, 2, TokenClass.KEY_CHANGE, 0, 3)
    assert isinstance(verify_keypad(digits, METER_A, key2, ReplayWindow.fresh(2)), Accepted)
    with pytest.raises(ValueError, match="range"):
        issue_keypad(key2, METER_A, 2, TokenClass.KEY_CHANGE, 0, 2)


@given(st.text(alphabet="0123456789", min_size=20, max_size=20))
def test_random_digit_strings_are_never_accepted(digits: str) -> None:
    assert isinstance(verify_keypad(digits, METER_A, KEY_A, FRESH), Rejected)


@given(st.integers(0, 10**19 - 1))
def test_random_strings_with_a_valid_check_digit_are_never_accepted(payload: int) -> None:
    body = f"{payload:019d}"
    result = verify_keypad(body + damm_check_digit(body), METER_A, KEY_A, FRESH)
    assert isinstance(result, Rejected)
    assert result.reason is not RejectReason.TYPO


@given(st.text(max_size=30))
def test_any_text_gives_a_verdict_and_never_raises(entry: str) -> None:
    assert isinstance(verify_keypad(entry, METER_A, KEY_A, FRESH), Rejected)


@pytest.mark.slow
def test_a_million_seeded_random_strings_are_never_accepted() -> None:
    """Each string gets a correct check digit so that every one reaches the MAC check:
    harder than raw random strings, of which nine in ten stop at the check digit."""
    rng = random.Random(20261128)
    reasons: dict[RejectReason, int] = {}
    for _ in range(1_000_000):
        body = f"{rng.getrandbits(64) % 10**19:019d}"
        result = verify_keypad(body + damm_check_digit(body), METER_A, KEY_A, FRESH)
        assert isinstance(result, Rejected), body
        reasons[result.reason] = reasons.get(result.reason, 0) + 1
    assert set(reasons) == {RejectReason.MALFORMED, RejectReason.WRONG_METER_OR_FORGED}
