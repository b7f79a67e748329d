"""The shipped DL/T 645 meter models load and say what the standard says; Modbus and DL/T 645 maps share a folder without being mistaken for each other; a malformed model gets an error naming the file, the point and the problem."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from protocol.dlt645.bcd import BitsFormat, NumberFormat
from protocol.dlt645.meter_map import (
    Dlt645Capability,
    load_dlt645_map,
    load_dlt645_map_file,
    parse_dlt645_map,
    shipped_dlt645_map_names,
)
from protocol.errors import MapError
from protocol.regmap import load_map, parse_map, shipped_map_names

HEADER = """
[map]
name = "test"
protocol = "dlt645"
title = "t"
version = 1
document = "d"
capabilities = [{caps}]
"""
ENERGY = """
[[points]]
name = "energy_import"
di = "00010000"
format = "XXXXXX.XX"
unit = "kWh"
"""


def _map(points: str, caps: str = '"energy"') -> str:
    return HEADER.format(caps=caps) + ENERGY + points


def test_both_generic_models_ship_and_load() -> None:
    assert shipped_dlt645_map_names() == ["dlt645_single_phase", "dlt645_three_phase"]
    for name in shipped_dlt645_map_names():
        model = load_dlt645_map(name)
        assert model.capabilities == set(Dlt645Capability)
        assert model.point("energy_import").di == 0x00010000
        assert model.point("status").di == 0x04000503
    three = load_dlt645_map("dlt645_three_phase")
    assert {p.name for p in three.points} >= {"voltage_l3", "current_l2", "active_power_l1"}


def test_the_standard_formats_of_the_issue() -> None:
    model = load_dlt645_map("dlt645_single_phase")
    formats = {p.name: (p.di_text, p.format.text, p.unit) for p in model.points}
    assert formats["energy_import"] == ("00010000", "XXXXXX.XX", "kWh")
    assert formats["voltage"] == ("02010100", "XXX.X", "V")
    assert formats["current"] == ("02020100", "XXX.XXX", "A")
    assert formats["active_power"] == ("02030000", "XX.XXXX", "kW")
    assert formats["power_factor"] == ("02060000", "X.XXX", "")
    assert formats["frequency"] == ("02800002", "XX.XX", "Hz")
    status = model.point("status")
    assert isinstance(status.format, BitsFormat)
    assert status.bits.index("relay_open") == 4
    assert status.bits.index("relay_command_open") == 6
    assert status.bits.index("protected") == 12
    power = model.point("active_power")
    assert isinstance(power.format, NumberFormat)
    assert power.format.signed
    assert power.base_value(power.format.encode(-15000)) == Decimal(-1500)  # -1.5 kW in W
    assert status.flags(1 << 4 | 1 << 12) == {"relay_open", "protected"}


def test_modbus_and_dlt645_maps_are_told_apart() -> None:
    assert not set(shipped_map_names()) & set(shipped_dlt645_map_names())
    with pytest.raises(MapError, match="unknown map"):
        load_map("dlt645_single_phase")
    with pytest.raises(MapError, match="unknown DL/T 645 map"):
        load_dlt645_map("pe1")
    text = (Path(__file__).parents[2] / "protocol/maps/dlt645_single_phase.toml").read_text()
    with pytest.raises(MapError, match=r"map\.protocol"):
        parse_map(text, "x.toml")


BAD = [
    (
        '\n[[points]]\nname = "voltage"\ndi = "02010100"\nformat = "XXX.X"\nunit = "kV"\n',
        "voltage",
        "unit 'kV'",
    ),
    (
        '\n[[points]]\nname = "voltage"\ndi = "02010100"\nformat = "XX.X"\nunit = "V"\n',
        "voltage",
        "odd number",
    ),
    (
        '\n[[points]]\nname = "other"\ndi = "00010000"\nformat = "XXXX"\n',
        "other",
        "also 'energy_import'",
    ),
    ('\n[[points]]\nname = "status"\ndi = "04000503"\nformat = "XXXX"\n', "status", "bits16"),
    (
        '\n[[points]]\nname = "x"\ndi = "04000503"\nformat = "bits16"\nsigned = true\n',
        "x",
        "only a number",
    ),
    ('\n[[points]]\nname = "x"\ndi = "0400050"\nformat = "bits16"\n', "x", "di"),
    ('\n[[points]]\nname = "date"\ndi = "04000101"\nformat = "hhmmss"\n', "date", "YYMMDDWW"),
    (
        '\n[[points]]\nname = "x"\ndi = "04000503"\nformat = "XXXX"\nbits = ["a"]\n',
        "x",
        "only a bits16",
    ),
]


@pytest.mark.parametrize(("points", "point", "problem"), BAD)
def test_a_bad_point_is_named_with_its_problem(points: str, point: str, problem: str) -> None:
    with pytest.raises(MapError, match=problem) as err:
        parse_dlt645_map(_map(points), "site/meter.toml")
    assert err.value.source == "site/meter.toml"
    assert err.value.point == point


def test_relay_capability_needs_the_relay_bits_of_the_status_word() -> None:
    status = (
        '\n[[points]]\nname = "status"\ndi = "04000503"\nformat = "bits16"\nbits = ["relay_open"]\n'
    )
    with pytest.raises(MapError, match="relay_command_open") as err:
        parse_dlt645_map(_map(status, '"energy", "relay"'), "m.toml")
    assert err.value.point == "status"
    with pytest.raises(MapError, match="needs a point named 'status'"):
        parse_dlt645_map(_map("", '"energy", "protect"'), "m.toml")
    bits = status.replace('["relay_open"]', '["relay_open", "relay_command_open"]')
    with pytest.raises(MapError, match="needs capability relay"):
        parse_dlt645_map(_map(bits, '"energy", "close_allowed"'), "m.toml")


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "meter.toml"
    path.write_text(_map("", '"energy", "teleport"'))
    with pytest.raises(MapError, match="capabilities") as err:
        load_dlt645_map_file(path)
    assert err.value.source == str(path)
    path.write_text("[map\n")
    with pytest.raises(MapError, match="not valid TOML"):
        load_dlt645_map_file(path)
    with pytest.raises(MapError, match="cannot read"):
        load_dlt645_map_file(tmp_path / "missing.toml")
