"""Every shipped register map loads and validates; a malformed map file gets an error naming the file, the point and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.errors import MapError
from protocol.regmap import Capability, Table, load_map, load_map_file, shipped_map_names

EXPECTED_MAPS = {"pe1", "sdm120", "sdm630", "em24", "iem3000"}


def test_all_five_maps_ship_and_load() -> None:
    assert set(shipped_map_names()) >= EXPECTED_MAPS
    for name in shipped_map_names():
        regmap = load_map(name)
        assert regmap.name == name
        assert regmap.document
        assert Capability.ENERGY in regmap.capabilities


def test_pe1_matches_the_design_contract() -> None:
    pe1 = load_map("pe1")
    expected = {
        "map_version": (Table.INPUT, 0, 1),
        "energy_import": (Table.INPUT, 1, 4),
        "energy_export": (Table.INPUT, 5, 4),
        "voltage": (Table.INPUT, 9, 1),
        "current": (Table.INPUT, 10, 2),
        "active_power": (Table.INPUT, 12, 2),
        "power_factor": (Table.INPUT, 14, 1),
        "frequency": (Table.INPUT, 15, 1),
        "status": (Table.INPUT, 16, 1),
        "keypad_seq": (Table.INPUT, 17, 1),
        "keypad_digits": (Table.INPUT, 18, 5),
        "serial_number": (Table.INPUT, 23, 8),
        "firmware_version": (Table.INPUT, 31, 1),
        "keypad_ack": (Table.HOLDING, 0, 1),
        "display_code": (Table.HOLDING, 1, 1),
        "display_credit": (Table.HOLDING, 2, 2),
        "load_limit": (Table.HOLDING, 4, 1),
        "alarm": (Table.HOLDING, 5, 1),
        "credit_lease": (Table.HOLDING, 6, 2),  # added after version 1's registers
        "relay": (Table.COIL, 0, 1),
    }
    got = {p.name: (p.table, p.address, p.count) for p in pe1.points}
    assert got == expected
    assert pe1.point("status").bits[:7] == (
        "relay_closed",
        "cover_open",
        "magnetic_tamper",
        "keypad_pending",
        "reconnect_button",
        "load_limit_tripped",
        "reverse_energy",
    )
    assert pe1.point("status").bits[7] == "lease_expired"
    assert Capability.RELAY in pe1.capabilities
    assert Capability.KEYPAD in pe1.capabilities


def test_third_party_maps_have_no_relay() -> None:
    for name in EXPECTED_MAPS - {"pe1"}:
        assert Capability.RELAY not in load_map(name).capabilities


def test_unknown_map_is_named() -> None:
    with pytest.raises(MapError, match="unknown map"):
        load_map("nope")


GOOD_HEADER = """
[map]
name = "x"
title = "X"
version = 1
document = "doc"
capabilities = ["energy"]
"""


@pytest.mark.parametrize(
    ("body", "point", "problem"),
    [
        (
            '[[points]]\nname = "energy_import"\ntable = "input"\naddress = 0\ntype = "u65"\n',
            "energy_import",
            "type",
        ),
        (
            '[[points]]\nname = "energy_import"\ntable = "input"\naddress = 0\ntype = "u32"\ncount = 3\n',
            "energy_import",
            "takes 2 register",
        ),
        (
            '[[points]]\nname = "energy_import"\ntable = "input"\naddress = 70000\ntype = "u32"\n',
            "energy_import",
            "address",
        ),
        (
            '[[points]]\nname = "energy_import"\ntable = "coil"\naddress = 0\ntype = "u32"\n',
            "energy_import",
            "single bits",
        ),
        (
            '[[points]]\nname = "energy_import"\ntable = "input"\naddress = 0\ntype = "u32"\n'
            '[[points]]\nname = "v"\ntable = "input"\naddress = 1\ntype = "u16"\n',
            "v",
            "overlaps",
        ),
        (
            '[[points]]\nname = "energy_import"\ntable = "input"\naddress = 0\ntype = "ascii"\n',
            "energy_import",
            "needs a count",
        ),
        (
            '[[points]]\nname = "energy_import"\ntable = "input"\naddress = 0\ntype = "u16"\n'
            'scale = "abc"\n',
            "energy_import",
            "scale",
        ),
        (
            '[[points]]\nname = "energy_import"\ntable = "input"\naddress = 0\ntype = "u16"\n'
            'colour = "red"\n',
            "energy_import",
            "colour",
        ),
        (
            '[[points]]\nname = "power"\ntable = "input"\naddress = 0\ntype = "u16"\n',
            None,
            "needs a point named 'energy_import'",
        ),
    ],
)
def test_malformed_map_file_names_file_point_and_problem(
    tmp_path: Path, body: str, point: str | None, problem: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(GOOD_HEADER + body)
    with pytest.raises(MapError) as info:
        load_map_file(path)
    err = info.value
    assert err.source == str(path)
    assert err.point == point
    assert problem in err.problem
    assert str(path) in str(err)


def test_map_file_that_is_not_toml(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[map\nname=")
    with pytest.raises(MapError, match="not valid TOML"):
        load_map_file(path)
