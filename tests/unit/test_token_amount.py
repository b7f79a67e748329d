"""The keypad amount field carries every amount exactly up to 163.83, rounds down above it by a documented step, and covers 0.01 to 100,000.00."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.tokens.amount import (
    MAX_KEYPAD_AMOUNT,
    decode_keypad_amount,
    encode_keypad_amount,
    round_down_to_keypad_amount,
)


def test_exact_up_to_163_83() -> None:
    for minor in range(16384):
        assert decode_keypad_amount(encode_keypad_amount(minor)) == minor


@pytest.mark.parametrize(
    ("minor", "rounded"),
    [
        (16383, 16383),
        (16384, 16380),
        (16389, 16380),
        (163830, 163830),
        (163839, 163830),
        (163840, 163800),
        (1_234_567, 1_234_500),
        (10_000_000, 10_000_000),
        (10_000_009, 10_000_000),
        (MAX_KEYPAD_AMOUNT, MAX_KEYPAD_AMOUNT),
    ],
)
def test_rounds_down_by_documented_steps(minor: int, rounded: int) -> None:
    assert round_down_to_keypad_amount(minor) == rounded


@given(st.integers(0, MAX_KEYPAD_AMOUNT))
def test_round_down_is_exact_close_and_never_up(minor: int) -> None:
    carried = round_down_to_keypad_amount(minor)
    assert carried <= minor
    # Worst relative loss: one step of 10**e against a mantissa of at least 1,638.
    assert (minor - carried) * 1638 <= minor
    assert decode_keypad_amount(encode_keypad_amount(carried)) == carried


@given(st.integers(0, 0xFFFF))
def test_every_field_decodes_and_reencodes_to_the_same_amount(field: int) -> None:
    minor = decode_keypad_amount(field)
    assert decode_keypad_amount(encode_keypad_amount(minor)) == minor


def test_inexact_amount_is_refused_not_rounded() -> None:
    with pytest.raises(ValueError, match="not exact"):
        encode_keypad_amount(16389)


@pytest.mark.parametrize("bad", [-1, MAX_KEYPAD_AMOUNT + 1])
def test_out_of_range_amount_is_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="minor units"):
        round_down_to_keypad_amount(bad)
