"""The Damm check digit catches every single-digit change and every adjacent swap, and rejects non-digits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.tokens.checkdigit import damm_check_digit, damm_valid

digit_strings = st.text(alphabet="0123456789", min_size=1, max_size=25)


def test_known_value() -> None:
    # The worked example of Damm's algorithm: 572 -> check digit 4.
    assert damm_check_digit("572") == "4"
    assert damm_valid("5724")
    assert not damm_valid("5723")


@given(digit_strings)
def test_appended_digit_validates(digits: str) -> None:
    assert damm_valid(digits + damm_check_digit(digits))


@given(digit_strings, st.data())
def test_every_single_digit_change_is_caught(digits: str, data: st.DataObject) -> None:
    full = digits + damm_check_digit(digits)
    pos = data.draw(st.integers(0, len(full) - 1))
    new = data.draw(st.sampled_from([d for d in "0123456789" if d != full[pos]]))
    assert not damm_valid(full[:pos] + new + full[pos + 1 :])


@given(st.text(alphabet="0123456789", min_size=1, max_size=25), st.data())
def test_every_adjacent_swap_is_caught(digits: str, data: st.DataObject) -> None:
    full = digits + damm_check_digit(digits)
    pos = data.draw(st.integers(0, len(full) - 2))
    if full[pos] == full[pos + 1]:
        return
    swapped = full[:pos] + full[pos + 1] + full[pos] + full[pos + 2 :]
    assert not damm_valid(swapped)


@pytest.mark.parametrize("bad", ["", "12a4", "１２", "12 3"])
def test_non_digits_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="digits"):
        damm_check_digit(bad)
