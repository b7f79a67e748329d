"""A DL/T 645 meter's measured points become the reading fields a Modbus meter's do, by the same rule: each in its field's unit, rounded to the point's BCD decimals (whole W and Wh, export energy rounded down), garbage (a power factor beyond 1, data that is not BCD) left out rather than failing the reading, a point the bus names but the model lacks never read, and a name that fills no reading field refused."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.dlt645_io import Dlt645MeterIO, snapshot_from
from gateway.measured import READING_POINTS, converter
from protocol.dlt645.bcd import NumberFormat
from protocol.dlt645.meter_map import load_dlt645_map
from protocol.messages import FIELD_OF_POINT, MEASURED
from protocol.regmap import load_map

SINGLE = load_dlt645_map("dlt645_single_phase")
THREE = load_dlt645_map("dlt645_three_phase")
PE1 = load_map("pe1")


def _fmt(name: str) -> NumberFormat:
    fmt = THREE.point(name).format
    assert isinstance(fmt, NumberFormat)
    return fmt


def _scaled(name: str) -> st.SearchStrategy[int]:
    fmt = _fmt(name)
    return st.integers(-fmt.limit + 1 if fmt.signed else 0, fmt.limit - 1)


def _energy(wh10: int = 1) -> bytes:
    return _fmt("energy_import").encode(wh10)


MEASURED_POINTS = [p for p in FIELD_OF_POINT if THREE.has(p)]


@given(st.data())
def test_every_measured_point_is_its_field_rounded_to_the_formats_decimals(
    data: st.DataObject,
) -> None:
    names = data.draw(st.lists(st.sampled_from(MEASURED_POINTS), unique=True))
    scaled = {name: data.draw(_scaled(name), label=name) for name in names}
    payloads = {"energy_import": _energy()} | {n: _fmt(n).encode(v) for n, v in scaled.items()}
    snap = snapshot_from(THREE, payloads)
    expected: dict[str, int | float] = {}
    for name, value in scaled.items():
        field, unit = FIELD_OF_POINT[name], MEASURED[FIELD_OF_POINT[name]][1]
        decimals = _fmt(name).decimals
        if unit == "W":  # kW with 4 decimals: 0.1 W, to the nearest whole W (half even)
            expected[field] = round(Decimal(value) / 10)
        elif unit == "Wh":  # kWh with 2 decimals: 10 Wh
            expected[field] = value * 10
        elif field == "power_factor" and abs(value) > 10**decimals:
            continue  # beyond 1: no real meter reports it
        else:
            expected[field] = float(Decimal(value).scaleb(-decimals))
    assert dict(snap.measured) == expected
    # In the fields' order, as a Modbus meter's, and of the types the schema says.
    order = list(MEASURED)
    assert [f for f, _ in snap.measured] == sorted(expected, key=order.index)
    for field, got in snap.measured:
        assert isinstance(got, int if MEASURED[field][1] in ("W", "Wh") else float)


@given(st.integers(0, 9999), st.integers(-9999, 9999), st.integers(-999, 999))
def test_the_same_value_gives_the_same_field_as_on_a_pe1(volts: int, amps: int, pf: int) -> None:
    """The rule is one: a PE-1 register of the same resolution yields the very same value."""
    dlt = snapshot_from(
        SINGLE,
        {
            "energy_import": _energy(),
            "voltage": _fmt("voltage").encode(volts),
            "current": _fmt("current").encode(amps),
            "power_factor": _fmt("power_factor").encode(pf),
        },
    )
    measured = dict(dlt.measured)
    assert measured["current_a"] == converter(PE1.point("current"), "current_a")(amps)
    assert measured["power_factor"] == converter(PE1.point("power_factor"), "power_factor")(pf)
    assert dlt.voltage_v == volts / 10  # the reading's own field, as before


def test_garbage_is_left_out_and_the_energy_still_bills() -> None:
    snap = snapshot_from(
        SINGLE,
        {
            "energy_import": _energy(12),
            "power_factor": _fmt("power_factor").encode(-1001),  # -1.001
            "frequency": b"\x1a\x50",  # not BCD
            "current": _fmt("current").encode(-79999),
        },
    )
    assert snap.energy_import_wh == 120
    assert snap.measured == (("current_a", -79.999),)


def test_energy_and_status_alone_carry_no_measured_fields() -> None:
    assert snapshot_from(SINGLE, {"energy_import": _energy()}).measured == ()


def test_the_bus_names_are_kept_where_the_model_has_them() -> None:
    names = ["voltage", "voltage_l2", "current"]
    assert Dlt645MeterIO(SINGLE, measured=names).measured == ("voltage", "current")
    assert Dlt645MeterIO(THREE, measured=names).measured == ("voltage", "voltage_l2", "current")
    polled = ("energy_import", "voltage", "status")  # read at every poll anyway
    assert Dlt645MeterIO(SINGLE, polled, measured=names).measured == ("current",)
    with pytest.raises(ValueError, match="no reading field for point"):
        Dlt645MeterIO(SINGLE, measured=["voltage", "energy_import"])
    with pytest.raises(ValueError, match="no reading field for point"):
        Dlt645MeterIO(SINGLE, measured=["voltage", "keypad_digits"])
    assert Dlt645MeterIO(SINGLE).measured == ()


def test_every_point_a_reading_carries_is_a_known_name() -> None:
    assert set(READING_POINTS) == {"voltage", "active_power"} | {p for p, _ in MEASURED.values()}
