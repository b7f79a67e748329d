"""The store's row form of a meter's state (gateway/store/state_row.py): any state reads back
equal, rows in pydantic's older form still read, the per-meter memo of spend texts never
changes a row, and a row that does not describe a state is refused with a typed error."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.driver import MeterState
from gateway.core.forecast import SpendSample
from gateway.core.json_forms import SettingsError, ledger_json
from gateway.core.ledger import Ledger
from gateway.core.settings import MeterSettings
from gateway.core.states import CreditState
from gateway.core.tariff import FlatPricing, Tariff, TariffSchedule, TierPosition
from gateway.store import StateRows, state_from_row

SETTINGS = MeterSettings(TariffSchedule.single(Tariff("KES", FlatPricing(Decimal(25)))))
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
ZONES = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-3, minutes=-15))]
)
#: hypothesis takes naive bounds and adds the zones
TIMES = st.datetimes(datetime(1971, 1, 1), datetime(9000, 1, 1), timezones=ZONES)  # noqa: DTZ001
MONEY = st.integers(-(10**15), 10**15)
COUNTS = st.integers(0, 10**15)
SAMPLES = st.builds(SpendSample, TIMES, COUNTS)
LEDGERS = st.builds(
    Ledger,
    balance=MONEY,
    debt=COUNTS,
    register_wh=st.none() | COUNTS,
    read_at=st.none() | TIMES,
    unbilled=st.fractions(Fraction(-1, 2), Fraction(1, 2), max_denominator=10**9),
    held_wh=COUNTS,
    tier=st.builds(TierPosition, TEXT, COUNTS),
    standing_paid_through=st.none() | st.dates(date(1971, 1, 1), date(9000, 1, 1)),
    opening_balance=MONEY,
    topups=COUNTS,
    charged=COUNTS,
    debt_recovered=COUNTS,
    standing_to_debt=COUNTS,
)
STATES = st.builds(
    MeterState,
    meter_id=TEXT.filter(bool),
    settings=st.just(SETTINGS),
    ledger=LEDGERS,
    credit=st.sampled_from(CreditState),
    comm_ok=st.booleans(),
    flags=st.frozensets(TEXT, max_size=3),
    spend=st.lists(SAMPLES, max_size=12).map(tuple),
    relay_observed=st.none() | st.booleans(),
    relay_mismatch_reported=st.booleans(),
    open_at_last_reading=st.booleans(),
)


@given(STATES)
def test_any_state_reads_back_equal(state: MeterState) -> None:
    row = StateRows().row(state)
    json.loads(row)  # valid JSON on its own
    assert state_from_row(row, SETTINGS) == state


@given(STATES)
def test_rows_in_pydantics_form_still_read(state: MeterState) -> None:
    """Stores of schema 3 and before wrote ``json_forms.ledger_json``."""
    assert state_from_row(ledger_json(state), SETTINGS) == state


@given(st.lists(st.lists(st.integers(0, 15), max_size=12), max_size=8), st.data())
def test_the_spend_memo_never_changes_a_row(picks: list[list[int]], data: st.DataObject) -> None:
    """Spend tuples drawn from one pool of samples share objects in every way (slid by
    one, shortened, reordered, repeated, unrelated): each row is what a fresh writer
    writes."""
    pool = [data.draw(SAMPLES) for _ in range(16)]
    base = data.draw(STATES)
    rows = StateRows()
    for pick in picks:
        state = MeterState(base.meter_id, SETTINGS, base.ledger, spend=tuple(pool[i] for i in pick))
        assert rows.row(state) == StateRows().row(state)


def test_a_sliding_window_reuses_the_texts_it_has() -> None:
    start = datetime(2026, 11, 2, tzinfo=UTC)
    samples = [SpendSample(start + timedelta(minutes=15 * n), n) for n in range(20)]
    rows = StateRows()
    for n in range(1, 20):
        state = MeterState("m1", SETTINGS, Ledger(), spend=tuple(samples[max(0, n - 12) : n]))
        assert rows.row(state) == StateRows().row(state)
        assert state_from_row(rows.row(state), SETTINGS) == state


def test_a_time_without_a_zone_is_written_in_pydantics_form() -> None:
    naive = MeterState("m1", SETTINGS, Ledger(read_at=datetime(2026, 11, 2)))  # noqa: DTZ001
    assert StateRows().row(naive) == ledger_json(naive)


def test_a_row_with_a_full_spend_window_is_a_third_shorter() -> None:
    start = datetime(2026, 11, 2, tzinfo=UTC)
    state = MeterState(
        "m1",
        SETTINGS,
        Ledger(register_wh=5000, read_at=start),
        spend=tuple(SpendSample(start - timedelta(minutes=15 * n), 99) for n in range(12, 0, -1)),
    )
    row = StateRows().row(state)
    assert len(row) < 0.75 * len(ledger_json(state))
    assert state_from_row(row, SETTINGS) == state


@pytest.mark.parametrize(
    "row",
    [
        "[]",
        "not json",
        '{"meter_id": "m1"}',
        '{"meter_id": "m1", "ledger": {"balance": "lots"}}',
        '{"meter_id": "m1", "ledger": {}, "spend": [[1, 2, 3]]}',
        '{"meter_id": "m1", "ledger": {}, "spend": [["x", 2]]}',
    ],
)
def test_a_row_that_is_no_state_is_refused(row: str) -> None:
    with pytest.raises(SettingsError, match="invalid meter state"):
        state_from_row(row, SETTINGS)


def test_a_time_out_of_range_is_refused() -> None:
    row = json.loads(StateRows().row(MeterState("m1", SETTINGS, Ledger())))
    row["ledger"]["read_at"] = 10**20  # microseconds: past year 9999
    with pytest.raises(SettingsError, match="time out of range"):
        state_from_row(json.dumps(row), SETTINGS)
