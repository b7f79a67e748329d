"""The ledger's register arithmetic and money rules: deltas, roll-over, backwards, implausible, rounding carry, standing charge, debt recovery."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.ledger import DeltaKind, Ledger, max_plausible_wh, register_delta
from gateway.core.money import energy_cost, round_money
from gateway.core.tariff import FlatPricing, Tariff

U16, U32, U64 = 1 << 16, 1 << 32, 1 << 64


@pytest.mark.parametrize(
    ("previous", "current", "width", "plausible", "kind", "energy"),
    [
        (None, 12345, 64, 100, DeltaKind.BASELINE, 0),  # first reading after enrolment
        (1000, 1000, 64, 100, DeltaKind.NORMAL, 0),
        (1000, 1100, 64, 100, DeltaKind.NORMAL, 100),  # exactly the plausible limit
        (1000, 1101, 64, 100, DeltaKind.IMPLAUSIBLE, 101),
        (1000, 51000, 64, 60_000, DeltaKind.NORMAL, 50_000),  # missed polls: one large delta
        (U32 - 10, 5, 32, 100, DeltaKind.ROLLOVER, 15),  # u32 wraps
        (U64 - 1, 0, 64, 100, DeltaKind.ROLLOVER, 1),  # PE-1's u64 Wh wraps
        (U16 - 3, 2, 16, 100, DeltaKind.ROLLOVER, 5),
        (U32 - 10, 5, 64, 100, DeltaKind.BACKWARDS, U32 - 15),  # same values, wider register
        (5000, 10, 32, 100, DeltaKind.BACKWARDS, 4990),  # meter reset or replaced
        (5000, 4999, 64, 100, DeltaKind.BACKWARDS, 1),
    ],
)
def test_register_delta_table(  # noqa: PLR0917
    previous: int | None, current: int, width: int, plausible: int, kind: DeltaKind, energy: int
) -> None:
    delta = register_delta(previous, current, width, plausible)
    assert (delta.kind, delta.energy_wh) == (kind, energy)


@pytest.mark.parametrize(("value", "width"), [(-1, 32), (U32, 32), (U64, 64)])
def test_register_value_outside_width_is_refused(value: int, width: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        register_delta(0, value, width, 100)


@given(
    previous=st.integers(0, U32 - 1),
    used=st.integers(0, 10_000),
)
def test_u32_delta_is_consumption_whatever_the_wrap(previous: int, used: int) -> None:
    current = (previous + used) % U32
    delta = register_delta(previous, current, 32, 10_000)
    assert delta.energy_wh == used
    assert delta.kind in (DeltaKind.NORMAL, DeltaKind.ROLLOVER)


def test_max_plausible_is_rated_power_times_elapsed_plus_margin() -> None:
    assert max_plausible_wh(3600, timedelta(hours=1), 0) == 3601
    assert max_plausible_wh(3600, timedelta(hours=1), 10) == 3961
    assert max_plausible_wh(3600, timedelta(seconds=1), 0) == 2
    assert max_plausible_wh(3600, timedelta(0), 0) == 1


@pytest.mark.parametrize(
    ("exact", "rounded"),
    [
        (Fraction(1, 2), 0),
        (Fraction(3, 2), 2),
        (Fraction(5, 2), 2),
        (Fraction(-1, 2), 0),
        (Fraction(-3, 2), -2),
        (Fraction(2, 3), 1),
        (Fraction(7, 3), 2),
    ],
)
def test_round_money_is_half_even(exact: Fraction, rounded: int) -> None:
    assert round_money(exact) == rounded


def test_energy_cost_is_exact() -> None:
    assert energy_cost(1, Decimal("28.34")) == Fraction(2834, 100_000)
    assert energy_cost(1000, Decimal("28.34")) == Fraction(2834, 100)


@given(st.lists(st.integers(0, 500), max_size=200), st.decimals("0", "100", places=4))
def test_carry_bills_exactly_what_was_used(deltas: list[int], price: Decimal) -> None:
    ledger = Ledger(balance=0)
    for wh in deltas:
        ledger, _ = ledger.charge_cost(energy_cost(wh, price))
        assert abs(ledger.unbilled) <= Fraction(1, 2)
    exact = energy_cost(sum(deltas), price)
    assert ledger.charged + ledger.unbilled == exact
    assert ledger.conserved()


def test_tiny_frequent_readings_are_not_lost_to_rounding() -> None:
    ledger = Ledger()
    for _ in range(1000):  # 3 Wh at 28.34 per kWh: 0.085 each
        ledger, _ = ledger.charge_cost(energy_cost(3, Decimal("28.34")))
    assert ledger.charged == 85


@pytest.mark.parametrize(
    ("balance", "charge", "from_balance", "to_debt"),
    [(100, 30, 30, 0), (20, 30, 20, 10), (0, 30, 0, 30), (-50, 30, 0, 30)],
)
def test_standing_charge_becomes_debt_without_credit(
    balance: int, charge: int, from_balance: int, to_debt: int
) -> None:
    ledger, taken, owed = Ledger(balance=balance, opening_balance=balance).charge_standing(charge)
    assert (taken, owed) == (from_balance, to_debt)
    assert ledger.balance == balance - from_balance
    assert ledger.debt == to_debt
    assert ledger.conserved()


@pytest.mark.parametrize(
    ("percent", "cap", "top_up", "debt", "recovered"),
    [
        (70, None, 1000, 5000, 700),
        (70, 300, 1000, 5000, 300),
        (70, None, 1000, 200, 200),  # never more than the debt
        (25, None, 999, 5000, 249),  # rounded down: never over-collected
        (0, None, 1000, 5000, 0),
        (70, None, 1000, 0, 0),
    ],
)
def test_debt_recovery_share_with_cap(
    percent: int, cap: int | None, top_up: int, debt: int, recovered: int
) -> None:
    tariff = Tariff(
        "GBP", FlatPricing(Decimal(10)), debt_recovery_percent=percent, debt_recovery_cap=cap
    )
    assert tariff.debt_recovery(top_up, debt) == recovered
    ledger = Ledger(debt=debt).top_up(top_up, recovered)
    assert ledger.balance == top_up - recovered
    assert ledger.debt == debt - recovered
    assert ledger.conserved()


def test_top_up_cannot_recover_more_than_owed() -> None:
    with pytest.raises(ValueError, match="debt recovered"):
        Ledger(debt=10).top_up(100, 11)
