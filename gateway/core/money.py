"""Money is ``int`` minor units; prices are exact decimals. The one rounding rule lives here."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from functools import lru_cache

WH_PER_KWH = 1000


def round_money(amount: Fraction) -> int:
    """Round an exact amount of minor units to whole minor units, half to even.

    Half-even (banker's rounding) so that, over many readings, ties do not always favour
    the utility or the customer. Callers carry the unrounded remainder forward (see
    ``Ledger.unbilled``), so rounding never loses or invents money over time: it only
    decides in which reading a fraction of a minor unit is billed.
    """
    return round_ratio(amount.numerator, amount.denominator)


def round_ratio(numerator: int, denominator: int) -> int:
    """``round_money`` of ``numerator / denominator`` (``denominator > 0``) in integers, for
    the per-reading fast path that keeps the exact amount as a ratio rather than a Fraction.
    Ties go to the even neighbour, as ``round(Fraction)`` does."""
    floor, remainder = divmod(numerator, denominator)
    twice = 2 * remainder
    if twice < denominator or (twice == denominator and floor % 2 == 0):
        return floor
    return floor + 1


@lru_cache(maxsize=1024)
def _price_per_wh(price_per_kwh: Decimal) -> Fraction:
    return Fraction(price_per_kwh) / WH_PER_KWH


def energy_cost(energy_wh: int, price_per_kwh: Decimal) -> Fraction:
    """The exact cost in minor units of ``energy_wh`` at ``price_per_kwh`` minor units per kWh."""
    return _price_per_wh(price_per_kwh) * energy_wh
