"""The store's row form of a meter's state (gateway/store/state_row.py): any state, drawn
field by field from the dataclasses themselves, reads back equal and names every field;
rows of schema 4 and in pydantic's older form still read; the per-meter memo of spend
texts never changes a row; a type with no row form stops the import; a row that does not
describe a state is refused with a typed error."""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.forecast import SpendSample
from gateway.core.ledger import Ledger
from gateway.core.meter_state import MeterState
from gateway.core.settings import MeterSettings
from gateway.core.tariff import FlatPricing, Tariff, TariffSchedule
from gateway.forms import SettingsError, ledger_json
from gateway.store import StateRows, state_from_row
from gateway.store import state_row as state_row_module

SETTINGS = MeterSettings(TariffSchedule.single(Tariff("KES", FlatPricing(Decimal(25)))))
ZONES = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-3, minutes=-15))]
)
#: hypothesis takes naive bounds and adds the zones
TIMES = st.datetimes(datetime(1971, 1, 1), datetime(9000, 1, 1), timezones=ZONES)  # noqa: DTZ001
#: a strategy per plain type; every other type is derived from its shape
BY_TYPE: dict[object, st.SearchStrategy[Any]] = {
    int: st.integers(-(10**15), 10**15),
    bool: st.booleans(),
    str: st.text(st.characters(exclude_categories=["Cs"]), max_size=12),
    datetime: TIMES,
    date: st.dates(date(1971, 1, 1), date(9000, 1, 1)),
    Fraction: st.fractions(Fraction(-1, 2), Fraction(1, 2), max_denominator=10**9),
    Decimal: st.decimals(allow_nan=False, allow_infinity=False, places=4),
    MeterSettings: st.just(SETTINGS),
}


def drawn(hint: Any) -> st.SearchStrategy[Any]:
    """Values of ``hint``: a dataclass gets every one of its fields drawn (``st.builds``
    alone leaves fields with defaults at their defaults, which would hide a field the
    row drops)."""
    if hint in BY_TYPE:
        return BY_TYPE[hint]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return st.sampled_from(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return st.builds(hint, **{f.name: drawn(hints[f.name]) for f in dataclasses.fields(hint)})
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([st.none() if a is type(None) else drawn(a) for a in args])
    if origin is frozenset:
        return st.frozensets(drawn(args[0]), max_size=3)
    if origin is tuple and args[1:] == (Ellipsis,):
        return st.lists(drawn(args[0]), max_size=12).map(tuple)
    return st.from_type(hint)


STATES: st.SearchStrategy[MeterState] = drawn(MeterState)


def field_paths(cls: type, prefix: str = "", apart: frozenset[str] = frozenset()) -> set[str]:
    """Every leaf of ``cls`` but ``apart`` as a dotted path (in a tuple of dataclasses:
    ``name[].field``)."""
    paths = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in apart:
            continue
        hint = hints[f.name]
        args = typing.get_args(hint)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            paths |= field_paths(hint, f"{prefix}{f.name}.")
        elif typing.get_origin(hint) is tuple and dataclasses.is_dataclass(args[0]):
            paths |= field_paths(typing.cast(type, args[0]), f"{prefix}{f.name}[].")
        else:
            paths.add(prefix + f.name)
    return paths


def row_paths(row: dict[str, Any], item_fields: dict[str, list[str]], prefix: str = "") -> set[str]:
    """The leaves a row holds, as ``field_paths`` names them."""
    paths = set()
    for key, value in row.items():
        if isinstance(value, dict):
            paths |= row_paths(value, item_fields, f"{prefix}{key}.")
        elif key in item_fields and value:
            assert all(len(item) == len(item_fields[key]) for item in value)
            paths |= {f"{prefix}{key}[].{name}" for name in item_fields[key]}
        else:
            paths.add(prefix + key)
    return paths


@given(STATES)
def test_any_state_reads_back_equal(state: MeterState) -> None:
    row = StateRows().row(state)
    json.loads(row)  # valid JSON on its own
    assert state_from_row(row, SETTINGS) == state


def test_the_row_names_every_field_but_the_settings() -> None:
    """Derived from the dataclasses: a field added to the state or the ledger shows up
    here, or this fails."""
    start = datetime(2026, 11, 2, tzinfo=UTC)
    state = MeterState("m1", SETTINGS, Ledger(read_at=start), spend=(SpendSample(start, 1),))
    row = json.loads(StateRows().row(state))
    spend_fields = [f.name for f in dataclasses.fields(SpendSample)]
    assert row_paths(row, {"spend": spend_fields}) == field_paths(
        MeterState, apart=frozenset({"settings"})
    )


@given(STATES)
def test_rows_in_pydantics_form_still_read(state: MeterState) -> None:
    """Stores of schema 3 and before wrote ``json_forms.ledger_json``."""
    assert state_from_row(ledger_json(state), SETTINGS) == state


#: a row as the schema-4 writer (its fields listed by hand) wrote it
SCHEMA_4_ROW = (
    '{"meter_id":"m00005","ledger":{"balance":49967,"debt":0,"register_wh":2665,'
    '"read_at":1793589300000000,"unbilled":"5/16","held_wh":0,"tier":{"period":"",'
    '"used_wh":0},"standing_paid_through":"2026-11-02","opening_balance":50000,"topups":0,'
    '"charged":33,"debt_recovered":0,"standing_to_debt":0},"credit":"normal","comm_ok":true,'
    '"flags":[],"spend":[[1793588400000000,31],[1793589300000000,33]],'
    '"relay_observed":null,"relay_mismatch_reported":false,"open_at_last_reading":false}'
)


def test_a_schema_4_row_reads_and_is_written_the_same() -> None:
    """The row format did not change, so the schema version did not either."""
    state = state_from_row(SCHEMA_4_ROW, SETTINGS)
    assert state.ledger.read_at == datetime(2026, 11, 2, 3, 15, tzinfo=UTC)
    assert state.spend[0] == SpendSample(datetime(2026, 11, 2, 3, tzinfo=UTC), 31)
    assert state.ledger.unbilled == Fraction(5, 16)
    assert StateRows().row(state) == SCHEMA_4_ROW, (
        "the row format changed (a field added, or its form): old rows still load, but a"
        " gateway of the current schema would drop what it does not know, so bump the"
        " schema version with a migration (gateway/store/schema.py) and update this row"
    )


def test_a_row_without_a_later_field_reads_it_as_its_default() -> None:
    """A row written before a field with a default existed."""
    row = json.loads(SCHEMA_4_ROW)
    del row["open_at_last_reading"]
    del row["ledger"]["standing_to_debt"]
    state = state_from_row(json.dumps(row), SETTINGS)
    assert state.open_at_last_reading is False
    assert state.ledger.standing_to_debt == 0


@given(st.lists(st.lists(st.integers(0, 15), max_size=12), max_size=8), st.data())
def test_the_spend_memo_never_changes_a_row(picks: list[list[int]], data: st.DataObject) -> None:
    """Spend tuples drawn from one pool of samples share objects in every way (slid by
    one, shortened, reordered, repeated, unrelated): each row is what a fresh writer
    writes."""
    pool = [data.draw(drawn(SpendSample)) for _ in range(16)]
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


@dataclasses.dataclass(frozen=True)
class _WithAComplexField:
    name: str
    impedance: complex


def test_a_field_with_no_row_form_is_refused_by_name() -> None:
    """What a new ``MeterState`` field of such a type does at import, instead of being
    left out of the row."""
    with pytest.raises(TypeError, match=r"_WithAComplexField\.impedance"):
        state_row_module._Form(_WithAComplexField)


@pytest.mark.parametrize(
    "row",
    [
        "[]",
        "not json",
        '{"meter_id": "m1"}',
        '{"meter_id": "m1", "ledger": {"balance": "lots"}}',
        '{"meter_id": "m1", "ledger": {}, "spend": [[1, 2, 3]]}',
        '{"meter_id": "m1", "ledger": {}, "spend": [["x", 2]]}',
        '{"meter_id": "m1", "ledger": {}, "spend": [[1]]}',
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
