"""The Eastron, Carlo Gavazzi and Schneider maps hold the maker's addresses, types and scales, and decode golden register images to the right physical values."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.codec import Value, physical
from protocol.regmap import Capability, Point, RegisterMap, Table, ValueType, WordOrder, load_map
from tests.support.register_images import decode_block, encode_block

THIRD_PARTY = ("sdm120", "sdm630", "em24", "iem3000")

#: Units a consumer knows how to convert; "" is dimensionless.
KNOWN_UNITS = {"Wh", "kWh", "V", "A", "W", "kW", "Hz", ""}

INPUT, HOLDING = Table.INPUT, Table.HOLDING
F32, I16, I32, I64 = ValueType.F32, ValueType.I16, ValueType.I32, ValueType.I64
HI, LO = WordOrder.HIGH_FIRST, WordOrder.LOW_FIRST

#: What a point should be, written from the maker's document, not from the TOML:
#: (table, address, type, word order, scale, unit).
Expected = tuple[Table, int, ValueType, WordOrder, str, str]


def _eastron(register: int, unit: str) -> Expected:
    """Eastron 3X register number -> start address (register - 30001), float32 high word first."""
    return (INPUT, register - 30001, F32, HI, "1", unit)


def _gavazzi(address: int, vtype: ValueType, weight: int, unit: str) -> Expected:
    """Carlo Gavazzi physical address, INT value with a "value weight" (raw = value * weight)."""
    return (INPUT, address, vtype, LO, str(Decimal(1) / Decimal(weight)), unit)


def _schneider(register: int, vtype: ValueType, unit: str) -> Expected:
    """Schneider register number -> Modbus address (register - 1), holding, high word first."""
    return (HOLDING, register - 1, vtype, HI, "1", unit)


DOCUMENTED: dict[str, dict[str, Expected]] = {
    # Eastron SDM120-Modbus protocol, input registers.
    "sdm120": {
        "voltage": _eastron(30001, "V"),
        "current": _eastron(30007, "A"),
        "active_power": _eastron(30013, "W"),
        "power_factor": _eastron(30031, ""),
        "frequency": _eastron(30071, "Hz"),
        "energy_import": _eastron(30073, "kWh"),
        "energy_export": _eastron(30075, "kWh"),
        "energy_total": _eastron(30343, "kWh"),
    },
    # Eastron SDM630Modbus protocol, 1.2.1 input registers.
    "sdm630": {
        "voltage": _eastron(30001, "V"),
        "voltage_l2": _eastron(30003, "V"),
        "voltage_l3": _eastron(30005, "V"),
        "current": _eastron(30007, "A"),
        "current_l2": _eastron(30009, "A"),
        "current_l3": _eastron(30011, "A"),
        "active_power_l1": _eastron(30013, "W"),
        "active_power_l2": _eastron(30015, "W"),
        "active_power_l3": _eastron(30017, "W"),
        "active_power": _eastron(30053, "W"),
        "power_factor": _eastron(30063, ""),
        "frequency": _eastron(30071, "Hz"),
        "energy_import": _eastron(30073, "kWh"),
        "energy_export": _eastron(30075, "kWh"),
        "energy_total": _eastron(30343, "kWh"),
    },
    # Carlo Gavazzi EM24-DIN communication protocol, table 2.3-1.
    "em24": {
        "voltage": _gavazzi(0x0000, I32, 10, "V"),
        "voltage_l2": _gavazzi(0x0002, I32, 10, "V"),
        "voltage_l3": _gavazzi(0x0004, I32, 10, "V"),
        "current": _gavazzi(0x000C, I32, 1000, "A"),
        "current_l2": _gavazzi(0x000E, I32, 1000, "A"),
        "current_l3": _gavazzi(0x0010, I32, 1000, "A"),
        "active_power_l1": _gavazzi(0x0012, I32, 10, "W"),
        "active_power_l2": _gavazzi(0x0014, I32, 10, "W"),
        "active_power_l3": _gavazzi(0x0016, I32, 10, "W"),
        "active_power": _gavazzi(0x0028, I32, 10, "W"),
        "power_factor": _gavazzi(0x0031, I16, 1000, ""),
        "frequency": _gavazzi(0x0033, I16, 10, "Hz"),
        "energy_import": _gavazzi(0x0034, I32, 10, "kWh"),
        "energy_export": _gavazzi(0x004E, I32, 10, "kWh"),
    },
    # Schneider iEM3100/iEM3200/iEM3300 user manual DOCA0005EN, Modbus register list.
    "iem3000": {
        "current": _schneider(3000, F32, "A"),
        "current_l2": _schneider(3002, F32, "A"),
        "current_l3": _schneider(3004, F32, "A"),
        "voltage": _schneider(3028, F32, "V"),
        "voltage_l2": _schneider(3030, F32, "V"),
        "voltage_l3": _schneider(3032, F32, "V"),
        "active_power_l1": _schneider(3054, F32, "kW"),
        "active_power_l2": _schneider(3056, F32, "kW"),
        "active_power_l3": _schneider(3058, F32, "kW"),
        "active_power": _schneider(3060, F32, "kW"),
        "frequency": _schneider(3110, F32, "Hz"),
        "energy_import": _schneider(3204, I64, "Wh"),
        "energy_export": _schneider(3208, I64, "Wh"),
    },
}


def _as_expected(p: Point) -> Expected:
    return (p.table, p.address, p.type, p.word_order, str(p.scale), p.unit)


@pytest.mark.parametrize("name", THIRD_PARTY)
def test_map_loads_metering_only(name: str) -> None:
    regmap = load_map(name)
    assert regmap.name == name
    assert regmap.capabilities == {Capability.ENERGY, Capability.INSTANTANEOUS}
    assert len(regmap.document) > 40, "the document field names the maker's register document"


@pytest.mark.parametrize("name", THIRD_PARTY)
def test_every_point_matches_the_document(name: str) -> None:
    regmap = load_map(name)
    got = {p.name: _as_expected(p) for p in regmap.points}
    expected = DOCUMENTED[name]
    assert set(got) == set(expected)
    for point_name, want in expected.items():
        table, address, vtype, order, scale, unit = want
        assert got[point_name][:4] == (table, address, vtype, order), point_name
        assert Decimal(got[point_name][4]) == Decimal(scale), point_name
        assert got[point_name][5] == unit, point_name


@pytest.mark.parametrize("name", THIRD_PARTY)
def test_units_and_one_table(name: str) -> None:
    regmap = load_map(name)
    assert {p.unit for p in regmap.points} <= KNOWN_UNITS
    assert len({p.table for p in regmap.points}) == 1, "one read table per meter"


def test_three_phase_maps_name_every_phase() -> None:
    for name in ("sdm630", "em24", "iem3000"):
        regmap = load_map(name)
        for point_name in ("voltage_l2", "voltage_l3", "current_l2", "current_l3"):
            assert regmap.has(point_name), f"{name} lacks {point_name}"
        for phase in (1, 2, 3):
            assert regmap.has(f"active_power_l{phase}"), f"{name} lacks phase {phase} power"


# Golden images: (map, point) -> (value to encode, registers at the point's address,
# physical value in the map's unit). Register words are written out by hand.
GOLDEN: list[tuple[str, str, Value, list[int], Decimal]] = [
    ("sdm120", "voltage", 230.0, [0x4366, 0x0000], Decimal("230.0")),
    ("sdm120", "current", 5.25, [0x40A8, 0x0000], Decimal("5.25")),
    ("sdm120", "active_power", -1500.0, [0xC4BB, 0x8000], Decimal(-1500)),
    ("sdm120", "frequency", 50.0, [0x4248, 0x0000], Decimal(50)),
    ("sdm120", "energy_import", 1234.5, [0x449A, 0x5000], Decimal("1234.5")),
    ("sdm630", "voltage_l2", 231.5, [0x4367, 0x8000], Decimal("231.5")),
    ("sdm630", "active_power", -1500.0, [0xC4BB, 0x8000], Decimal(-1500)),
    ("sdm630", "energy_total", 8765.25, [0x4608, 0xF500], Decimal("8765.25")),
    ("em24", "voltage", 2301, [0x08FD, 0x0000], Decimal("230.1")),
    ("em24", "current", 12500, [0x30D4, 0x0000], Decimal("12.5")),
    ("em24", "active_power", -15000, [0xC568, 0xFFFF], Decimal(-1500)),
    ("em24", "power_factor", -985, [0xFC27], Decimal("-0.985")),
    ("em24", "frequency", 500, [0x01F4], Decimal(50)),
    ("em24", "energy_import", 123456, [0xE240, 0x0001], Decimal("12345.6")),
    ("iem3000", "voltage", 230.0, [0x4366, 0x0000], Decimal(230)),
    ("iem3000", "active_power", 3.5, [0x4060, 0x0000], Decimal("3.5")),
    ("iem3000", "energy_import", 1234567890, [0x0000, 0x0000, 0x4996, 0x02D2], Decimal(1234567890)),
]


@pytest.mark.parametrize(("name", "point_name", "value", "words", "phys"), GOLDEN)
def test_encode_block_writes_the_golden_words(
    name: str, point_name: str, value: Value, words: list[int], phys: Decimal
) -> None:
    regmap = load_map(name)
    point = regmap.point(point_name)
    start, image = encode_block(regmap, point.table, {point_name: value})
    assert image[point.address - start : point.end - start] == words
    decoded = decode_block(regmap, point.table, start, image)
    assert decoded[point_name] == value
    assert physical(point, decoded[point_name]) == phys


def _image_from_words(regmap: RegisterMap, table: Table, placed: dict[int, list[int]]) -> list[int]:
    """A register image built by hand: zeros with words dropped at document addresses."""
    start, count = regmap.span(table)
    image = [0] * count
    for address, words in placed.items():
        image[address - start : address - start + len(words)] = words
    return image


@pytest.mark.parametrize("name", THIRD_PARTY)
def test_decode_block_reads_a_hand_built_image(name: str) -> None:
    regmap = load_map(name)
    cases = [g for g in GOLDEN if g[0] == name]
    table = regmap.point(cases[0][1]).table
    placed = {DOCUMENTED[name][point_name][1]: words for _, point_name, _, words, _ in cases}
    start, _ = regmap.span(table)
    decoded = decode_block(regmap, table, start, _image_from_words(regmap, table, placed))
    assert set(decoded) == {p.name for p in regmap.points}
    for _, point_name, _, _, phys in cases:
        assert physical(regmap.point(point_name), decoded[point_name]) == phys


def test_em24_words_are_low_first_not_high_first() -> None:
    """The same two words read high-first would be 230.1 V * 65536: the order matters."""
    em24 = load_map("em24")
    image = _image_from_words(em24, INPUT, {0x0000: [0x08FD, 0x0000]})
    volts = physical(em24.point("voltage"), decode_block(em24, INPUT, 0, image)["voltage"])
    assert volts == Decimal("230.1")
    assert volts != Decimal(0x08FD0000) / 10


def _values_for(point: Point) -> st.SearchStrategy[Value]:
    if point.type is F32:
        return st.floats(width=32, allow_nan=False, allow_infinity=False)
    bits = {I16: 16, I32: 32, I64: 64}[point.type]
    return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


@st.composite
def map_images(draw: st.DrawFn) -> tuple[RegisterMap, dict[str, Value]]:
    regmap = load_map(draw(st.sampled_from(THIRD_PARTY)))
    values = {p.name: draw(_values_for(p)) for p in regmap.points}
    return regmap, values


@given(map_images())
def test_whole_map_images_round_trip(case: tuple[RegisterMap, dict[str, Value]]) -> None:
    regmap, values = case
    (table,) = {p.table for p in regmap.points}
    start, image = encode_block(regmap, table, values)
    decoded = decode_block(regmap, table, start, image)
    assert decoded.keys() == values.keys()
    for key, value in values.items():
        assert decoded[key] == value, key
        assert type(decoded[key]) is type(value), key
