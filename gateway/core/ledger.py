"""The per-meter credit ledger and the register arithmetic that feeds it.

Consumption is the difference between two good readings of the cumulative import
register, never power. Every amount is int minor units; the unbilled fraction of a minor
unit is carried exactly (``unbilled``), so that frequent small readings are neither lost
to rounding nor over-billed. The ledger keeps running totals so that, at any time,
``balance == opening_balance + topups - charged - debt_recovered`` to the minor unit.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from enum import StrEnum
from fractions import Fraction
from typing import Any

from gateway.core.frozen import quick_init
from gateway.core.money import round_money
from gateway.core.tariff import TierPosition

_MICROSECOND = timedelta(microseconds=1)


class DeltaKind(StrEnum):
    BASELINE = "baseline"  # first reading after enrolment: nothing to charge
    NORMAL = "normal"
    ROLLOVER = "rollover"  # the register wrapped past its width
    BACKWARDS = "backwards"  # meter reset or replaced: no refund, new baseline
    IMPLAUSIBLE = "implausible"  # more than the rated power could use: held, not charged


@dataclass(frozen=True, slots=True)
class RegisterDelta:
    kind: DeltaKind
    energy_wh: int


def max_plausible_wh(
    rated_power_w: int, elapsed: timedelta, margin_percent: int, resolution_wh: int = 1
) -> int:
    """The largest register step a meter rated ``rated_power_w`` can show after ``elapsed``:
    the energy it can use in that time, plus a margin, rounded up, plus one step of the
    register's resolution. A register that counts in steps of ``resolution_wh`` shows the
    energy rounded down to a step, so the energy used before the last reading that it
    did not yet show (up to one step less a Wh) may appear now: an EM24 counting in
    100 Wh steps moves by 100 Wh after 5 s of a 12 kW load when the previous reading
    held the step back."""
    micros = max(elapsed // _MICROSECOND, 0)
    numerator = rated_power_w * micros * (100 + margin_percent)
    denominator = 3_600_000_000 * 100
    return -(-numerator // denominator) + max(resolution_wh, 1)


def register_delta(
    previous: int | None, current: int, width_bits: int, plausible_wh: int
) -> RegisterDelta:
    """Classify the step of a cumulative register of ``width_bits`` bits.

    A value below the previous one is a roll-over only if the wrapped delta is plausible;
    otherwise the register went backwards. ValueError for a value outside the width.
    """
    modulus = 1 << width_bits
    if not 0 <= current < modulus:
        raise ValueError(f"register value {current} outside a {width_bits}-bit register")
    if previous is None:
        return RegisterDelta(DeltaKind.BASELINE, 0)
    if current >= previous:
        delta = current - previous
        if delta > plausible_wh:
            return RegisterDelta(DeltaKind.IMPLAUSIBLE, delta)
        return RegisterDelta(DeltaKind.NORMAL, delta)
    wrapped = current + modulus - previous
    if wrapped <= plausible_wh:
        return RegisterDelta(DeltaKind.ROLLOVER, wrapped)
    return RegisterDelta(DeltaKind.BACKWARDS, previous - current)


@quick_init
@dataclass(frozen=True, slots=True)
class Ledger:
    """One meter's money and its last trusted register."""

    balance: int = 0
    debt: int = 0
    register_wh: int | None = None
    read_at: datetime | None = None
    #: exact cost already consumed but not yet billed, always within [-1/2, 1/2]
    unbilled: Fraction = Fraction(0)
    #: energy of implausible jumps, held for review and not charged
    held_wh: int = 0
    tier: TierPosition = field(default_factory=TierPosition)
    #: the last local day whose standing charge has been taken
    standing_paid_through: date | None = None
    opening_balance: int = 0
    topups: int = 0
    #: energy and standing charges taken from the balance
    charged: int = 0
    debt_recovered: int = 0
    #: standing charges that found no credit and became debt
    standing_to_debt: int = 0

    def charge_cost(self, cost: Fraction, **also: Any) -> tuple[Ledger, int]:
        """Bill an exact cost: round once, carry the remainder. Returns the amount billed.
        ``also`` sets other fields in the same copy (the register that was read)."""
        exact = self.unbilled + cost
        amount = round_money(exact)
        return (
            replace(
                self,
                balance=self.balance - amount,
                charged=self.charged + amount,
                unbilled=exact - amount,
                **also,
            ),
            amount,
        )

    def charge_standing(self, amount: int) -> tuple[Ledger, int, int]:
        """Take a day's standing charge from the credit; what finds no credit becomes debt.
        Returns (ledger, from balance, to debt)."""
        from_balance = max(0, min(amount, self.balance))
        to_debt = amount - from_balance
        return (
            replace(
                self,
                balance=self.balance - from_balance,
                charged=self.charged + from_balance,
                debt=self.debt + to_debt,
                standing_to_debt=self.standing_to_debt + to_debt,
            ),
            from_balance,
            to_debt,
        )

    def top_up(self, amount: int, recovered: int) -> Ledger:
        """Credit ``amount`` of which ``recovered`` repays debt."""
        if not 0 <= recovered <= min(amount, self.debt):
            raise ValueError("debt recovered must be within 0..min(amount, debt)")
        return replace(
            self,
            balance=self.balance + amount - recovered,
            debt=self.debt - recovered,
            topups=self.topups + amount,
            debt_recovered=self.debt_recovered + recovered,
        )

    def conserved(self) -> bool:
        """Whether the balance is exactly what the totals say it is."""
        return (
            self.balance == self.opening_balance + self.topups - self.charged - self.debt_recovered
        )
