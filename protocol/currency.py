"""Money as a person types and reads it: currency units with the currency's decimals
(``12.50`` KES), turned into the integer minor units the store and the MQTT contract
carry (1250), exactly, and back for display. The one parser of typed amounts.

The decimals are ISO 4217's minor-unit digits; codes not listed below use 2.
"""

from __future__ import annotations

import re
from decimal import Decimal

#: ISO 4217 currencies whose minor unit is not 1/100 (every other code: 2 decimals).
_DECIMALS_NOT_TWO = {
    # no minor unit
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0,
    "PYG": 0, "RWF": 0, "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0,
    "XPF": 0,
    # thousandths
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
    # ten-thousandths
    "CLF": 4, "UYW": 4,
}  # fmt: skip
DEFAULT_DECIMALS = 2
#: digits a typed price per kWh may carry below the minor unit (0.123456 of a cent)
PRICE_EXTRA_DECIMALS = 6
_CODE = re.compile(r"[A-Z]{3}")
#: a plain amount: digits, optionally a point and digits; no sign, exponent or grouping
_PLAIN = re.compile(r"[0-9]{1,15}(\.[0-9]{1,15})?")


class AmountError(ValueError):
    """A typed amount that is not money in this currency; the message says why."""


def currency_decimals(currency: str) -> int:
    """Minor-unit digits of an ISO 4217 code: 2 for ``KES``, 0 for ``JPY``, 3 for ``KWD``."""
    if not _CODE.fullmatch(currency):
        raise AmountError(f"{currency!r} is not an ISO 4217 code like KES")
    return _DECIMALS_NOT_TWO.get(currency, DEFAULT_DECIMALS)


def _plain(text: str, signed: bool) -> tuple[bool, Decimal]:
    """(negative, magnitude) of a plain decimal; AmountError for anything else."""
    body = text.strip()
    negative = body.startswith("-")
    if negative and not signed:
        raise AmountError(f"{text.strip()[:40]!r} is negative: an amount here is 0 or more")
    if negative:
        body = body[1:]
    if not _PLAIN.fullmatch(body):
        raise AmountError(f"{text.strip()[:40]!r} is not an amount like 12.50")
    return negative, Decimal(body)


def parse_amount(text: str, decimals: int, *, signed: bool = False) -> int:
    """``"12.50"`` at 2 decimals -> 1250 minor units, exactly. Refuses a sign (unless
    ``signed``), an exponent, grouping and more decimals than the currency has."""
    negative, magnitude = _plain(text, signed)
    minor = magnitude.scaleb(decimals)
    if minor != minor.to_integral_value():
        raise AmountError(f"{text.strip()} has more than {decimals} decimals")
    return -int(minor) if negative else int(minor)


def parse_price(text: str, decimals: int) -> Decimal:
    """A price per kWh typed in currency units (``"25.5"``) as exact minor units per kWh
    (``Decimal("2550")``); up to ``PRICE_EXTRA_DECIMALS`` digits below the minor unit."""
    _, magnitude = _plain(text, signed=False)
    minor = magnitude.scaleb(decimals)
    exponent = minor.normalize().as_tuple().exponent
    assert isinstance(exponent, int)  # a finite plain decimal
    if exponent < -PRICE_EXTRA_DECIMALS:
        raise AmountError(
            f"{text.strip()} has more than {decimals + PRICE_EXTRA_DECIMALS} decimals"
        )
    return minor.normalize() if exponent < 0 else minor.quantize(Decimal(1))


def format_amount(minor: int, decimals: int, *, grouping: bool = False) -> str:
    """1250 at 2 decimals -> ``"12.50"`` (``"1,234.50"`` with ``grouping``); -5 -> ``"-0.05"``."""
    units, rest = divmod(abs(minor), 10**decimals)
    whole = f"{units:,}" if grouping else str(units)
    sign = "-" if minor < 0 else ""
    return f"{sign}{whole}.{rest:0{decimals}d}" if decimals else f"{sign}{whole}"
