"""Readings carry every point a register map publishes (current, power factor, frequency, export energy, per phase on three-phase maps), in the field's unit and rounded to the point's resolution (an SDM120's float32 199.8 V is 199.8), map data decides, and Home Assistant discovery follows."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from examples.headend import load_validators
from gateway.core.events import ReadingReceived
from gateway.core.reports import reading_report
from gateway.measured import reading_fields, rounded
from gateway.meter_io import MeterIO
from protocol.codec import Value, encode
from protocol.errors import MapError
from protocol.home_assistant import discovery_messages
from protocol.messages import MEASURED, encode_body, encode_message
from protocol.mqtt import Topics, decode_message
from protocol.regmap import RegisterMap, load_map, parse_map

#: What a meter reports, in each point's own unit (a float32 register holds the nearest).
REPORTED: dict[str, Value] = {
    "energy_import": 1234,
    "energy_export": 500,
    "voltage": 199.8,
    "voltage_l2": 230.1,
    "voltage_l3": 228.7,
    "current": 5.123,
    "current_l2": 4.5,
    "current_l3": 0.25,
    "active_power": 1000,
    "active_power_l1": 400,
    "active_power_l2": 350,
    "active_power_l3": 250,
    "power_factor": 0.97,
    "frequency": 49.98,
}


def raw(regmap: RegisterMap, name: str, value: Value) -> Value:
    """``value`` (in the point's unit) as the point's raw register value."""
    point = regmap.point(name)
    if isinstance(value, int) and point.unit in ("kWh", "kW"):
        value = value / 1000
    if point.type.value.startswith(("u", "i")):
        return int((Decimal(str(value)) / point.scale).to_integral_value())
    return float(value)


def registers(io: MeterIO, values: dict[str, Value]) -> list[list[int]]:
    out = []
    for block in io.plan:
        regs = [0] * block.count
        for p in block.points:
            if p.name in values:
                regs[p.address - block.start : p.end - block.start] = encode(
                    p, raw(io.regmap, p.name, values[p.name])
                )
        out.append(regs)
    return out


def test_an_sdm120_float32_voltage_is_published_at_its_resolution() -> None:
    io = MeterIO(load_map("sdm120"))
    snap = io.snapshot(registers(io, REPORTED))
    assert snap.voltage_v == 199.8  # not 199.8000030517578, the float32's value
    assert dict(snap.measured) == {
        "current_a": 5.123,
        "power_factor": 0.97,
        "frequency_hz": 49.98,
        "energy_export_wh": 500,
    }
    event = ReadingReceived("m1", snap.energy_import_wh, datetime(2026, 12, 7, tzinfo=UTC),
                            voltage_v=snap.voltage_v, measured=snap.measured)  # fmt: skip
    body = encode_body(reading_report("m1", event, 0).body)
    assert '"voltage_v":199.8,' in body
    assert (
        '"current_a":5.123,"power_factor":0.97,"frequency_hz":49.98,"energy_export_wh":500' in body
    )


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("pe1", {"current_a", "power_factor", "frequency_hz", "energy_export_wh"}),
        ("sdm120", {"current_a", "power_factor", "frequency_hz", "energy_export_wh"}),
        ("sdm630", set(MEASURED)),
        ("em24", set(MEASURED)),
        # the iEM3000's power factor uses Schneider's own encoding: its map leaves it out
        ("iem3000", set(MEASURED) - {"power_factor"}),
    ],
)
def test_each_shipped_map_publishes_its_points_in_the_reading(name: str, fields: set[str]) -> None:
    regmap = load_map(name)
    io = MeterIO(regmap)
    snap = io.snapshot(registers(io, REPORTED))
    measured = dict(snap.measured)
    assert set(measured) == fields
    expected = {f: REPORTED[MEASURED[f][0]] for f in fields}
    # a map counting in coarser steps publishes its own steps (EM24: 0.1 V, 0.1 W, 0.1 Hz)
    for field, value in measured.items():
        point = regmap.point(MEASURED[field][0])
        step = point.resolution if point.resolution is not None else Decimal("0.001")
        assert abs(Decimal(str(value)) - Decimal(str(expected[field]))) <= step, field
        assert isinstance(value, int) == (MEASURED[field][1] in ("W", "Wh")), field
    event = ReadingReceived("m1", snap.energy_import_wh, datetime(2026, 12, 7, tzinfo=UTC),
                            power_w=snap.power_w, voltage_v=snap.voltage_v,
                            measured=snap.measured)  # fmt: skip
    payload = encode_message(
        "reading",
        encode_body(reading_report("m1", event, 3).body),
        gateway="gw-1",
        meter="m1",
        seq=1,
        ts="2026-12-07T00:00:00.000Z",
    )
    data = json.loads(payload)
    assert [e.message for e in load_validators()["reading"].iter_errors(data)] == []
    decoded = decode_message(payload)
    assert {k: decoded[k] for k in fields} == measured  # type: ignore[literal-required]
    assert set(reading_fields(regmap)) == fields | {"voltage_v"}


MAP = """
[map]
name = "x"
title = "x"
version = 1
document = "x"
capabilities = ["energy"]

[[points]]
name = "energy_import"
table = "input"
address = 0
type = "u32"
unit = "Wh"

[[points]]
name = "{name}"
table = "input"
address = 2
type = "f32"
{extra}
"""


def test_map_data_decides_what_is_published() -> None:
    kept_out = parse_map(MAP.format(name="frequency", extra="publish = false"), "m.toml")
    assert not kept_out.point("frequency").publish
    assert parse_map(MAP.format(name="frequency", extra=""), "m.toml").point("frequency").publish
    with pytest.raises(MapError, match="readings have no field for it"):
        parse_map(MAP.format(name="temperature", extra="publish = true"), "m.toml")
    with pytest.raises(MapError, match="resolution"):
        parse_map(MAP.format(name="frequency", extra='resolution = "-0.1"'), "m.toml")
    with pytest.raises(MapError, match="resolution"):
        parse_map(MAP.format(name="frequency", extra='resolution = "fine"'), "m.toml")


@given(
    st.decimals(-(10**6), 10**6, places=6, allow_nan=False),
    st.sampled_from(["0.1", "0.01", "0.001", "0.5", "2"]),
)
def test_a_rounded_value_is_the_nearest_step_of_the_resolution(value: Decimal, step: str) -> None:
    resolution = Decimal(step)
    got = Decimal(repr(rounded(value, resolution, whole=False, floor=False)))
    assert got % resolution == 0
    assert abs(got - value) <= resolution / 2


def test_home_assistant_discovery_follows_the_published_points() -> None:
    fields = reading_fields(load_map("sdm630"))
    msgs = dict(discovery_messages(Topics("gw-1"), "M-1", currency="KES", measured=fields))
    assert len(msgs) == 4 + len(fields)
    by_template = {c["value_template"]: c for c in msgs.values()}
    assert by_template["{{ value_json.current_l3_a }}"]["device_class"] == "current"
    assert by_template["{{ value_json.frequency_hz }}"]["unit_of_measurement"] == "Hz"
    assert by_template["{{ value_json.voltage_v }}"]["unit_of_measurement"] == "V"
    assert len({c["unique_id"] for c in msgs.values()}) == len(msgs)
