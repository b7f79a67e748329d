"""Money typed in currency units becomes exact integer minor units with the currency's ISO 4217 decimals (never a float), prices keep their sub-minor digits exactly, display round-trips, and anything else is refused with an AmountError that says why."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.currency import (
    PRICE_EXTRA_DECIMALS,
    AmountError,
    currency_decimals,
    format_amount,
    parse_amount,
    parse_price,
)


def test_iso_4217_decimals() -> None:
    assert [currency_decimals(c) for c in ("KES", "USD", "JPY", "UGX", "KWD", "CLF")] == [
        2, 2, 0, 0, 3, 4,
    ]  # fmt: skip
    for bad in ("kes", "KE", "KESS", "", "12A"):
        with pytest.raises(AmountError, match="ISO 4217"):
            currency_decimals(bad)


@pytest.mark.parametrize(
    ("text", "decimals", "minor"),
    [("12.50", 2, 1250), ("12.5", 2, 1250), ("12", 2, 1200), ("0.01", 2, 1), ("500", 0, 500),
     ("1.234", 3, 1234), (" 7.00 ", 2, 700), ("0", 2, 0)],
)  # fmt: skip
def test_amounts_in_currency_units(text: str, decimals: int, minor: int) -> None:
    assert parse_amount(text, decimals) == minor


@pytest.mark.parametrize(
    ("text", "decimals", "problem"),
    [
        ("-1", 2, "is negative"),
        ("-0.01", 2, "is negative"),
        ("12.505", 2, "more than 2 decimals"),
        ("1.5", 0, "more than 0 decimals"),
        ("1e3", 2, "not an amount like 12.50"),
        ("1,000.00", 2, "not an amount like 12.50"),
        ("+5", 2, "not an amount like 12.50"),
        ("NaN", 2, "not an amount like 12.50"),
        ("", 2, "not an amount like 12.50"),
        (".5", 2, "not an amount like 12.50"),
    ],
)
def test_what_is_not_an_amount_is_refused_with_the_reason(
    text: str, decimals: int, problem: str
) -> None:
    with pytest.raises(AmountError, match=problem):
        parse_amount(text, decimals)


def test_a_signed_amount_may_be_negative() -> None:
    assert parse_amount("-1.50", 2, signed=True) == -150
    assert parse_amount("1.50", 2, signed=True) == 150


@given(st.integers(-(10**14), 10**14), st.integers(0, 4))
def test_display_and_parse_round_trip(minor: int, decimals: int) -> None:
    assert parse_amount(format_amount(minor, decimals), decimals, signed=True) == minor


@given(st.decimals(min_value=0, max_value=10**9, places=2, allow_nan=False))
def test_parsing_is_exact(amount: Decimal) -> None:
    minor = parse_amount(str(amount), 2)
    assert isinstance(minor, int)
    assert minor == int(amount * 100)


@given(st.text(max_size=30), st.integers(0, 4), st.booleans())
def test_any_text_is_an_int_or_an_amount_error(text: str, decimals: int, signed: bool) -> None:
    try:
        minor = parse_amount(text, decimals, signed=signed)
    except AmountError as exc:
        assert str(exc)
        return
    assert isinstance(minor, int)
    assert signed or minor >= 0


@pytest.mark.parametrize(
    ("text", "decimals", "per_kwh"),
    [("25.50", 2, Decimal(2550)), ("0.2345", 2, Decimal("23.45")), ("25", 0, Decimal(25)),
     ("0.12345678", 2, Decimal("12.345678")), ("100", 2, Decimal(10000))],
)  # fmt: skip
def test_prices_keep_their_digits_below_the_minor_unit(
    text: str, decimals: int, per_kwh: Decimal
) -> None:
    assert parse_price(text, decimals) == per_kwh


@given(st.text(max_size=30), st.integers(0, 4))
def test_any_price_text_is_exact_or_refused(text: str, decimals: int) -> None:
    try:
        price = parse_price(text, decimals)
    except AmountError:
        return
    assert price.is_finite()
    assert price >= 0
    exponent = price.as_tuple().exponent
    assert isinstance(exponent, int)
    assert exponent >= -PRICE_EXTRA_DECIMALS
    assert price == Decimal(text.strip()).scaleb(decimals)


def test_display_groups_thousands_on_request() -> None:
    assert format_amount(123_456_78, 2, grouping=True) == "123,456.78"
    assert format_amount(-5, 2) == "-0.05"
    assert format_amount(500, 0) == "500"
