"""The fast packed register images equal what protocol.codec encodes for every shipped map, and every point decodes back to the physics it came from."""

from __future__ import annotations

import struct
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meter_sim.errors import SetupError
from meter_sim.physics import MeterModel, Tamper
from meter_sim.registers import MapLayout, source_for
from protocol.codec import physical
from protocol.regmap import Point, Table, ValueType, WordOrder, load_map, shipped_map_names
from tests.support.register_images import decode_block

LAYOUTS = {name: MapLayout(load_map(name), 3) for name in shipped_map_names()}


@settings(max_examples=60)
@given(
    seed=st.integers(0, 2**31),
    unit=st.integers(1, 247),
    minutes=st.integers(0, 5_000_000),
    load=st.one_of(st.none(), st.integers(0, 100_000)),
    reverse=st.booleans(),
    relay=st.booleans(),
    digits=st.text("0123456789", min_size=20, max_size=20),
    stored=st.dictionaries(st.integers(0, 5), st.integers(0, 0xFFFF)),
)
def test_packed_images_equal_the_codec_for_every_map(  # noqa: PLR0917 - hypothesis arguments
    seed: int,
    unit: int,
    minutes: int,
    load: int | None,
    reverse: bool,
    relay: bool,
    digits: str,
    stored: dict[int, int],
) -> None:
    now = minutes * 60.0
    model = MeterModel(unit, seed, now)
    model.set_load(load, now)
    model.set_tamper(Tamper.REVERSE, reverse, now)
    model.set_relay(relay, now)
    model.enter_keypad(digits, now)
    for name, layout in LAYOUTS.items():
        for table in (Table.INPUT, Table.HOLDING):
            if table not in layout.tables:
                continue
            regs = layout.image(table, model, stored)
            packed = layout.image_bytes(table, model, stored)
            assert packed == struct.pack(f">{len(regs)}H", *regs), (name, table)


def test_pe1_points_decode_to_the_model_state() -> None:
    layout = LAYOUTS["pe1"]
    model = MeterModel(5, 1, 1_767_268_800.0)
    model.set_load(4321, 1_767_268_800.0)
    model.enter_keypad("98765432109876543210", 1_767_268_800.0)
    start = layout.tables[Table.INPUT].start
    values = decode_block(layout.regmap, Table.INPUT, start, layout.image(Table.INPUT, model, {}))
    inst = model.instant()
    assert values == {
        "map_version": 1,
        "energy_import": model.energy_import_wh,
        "energy_export": 0,
        "voltage": inst.voltage_dv,
        "current": inst.current_ma,
        "active_power": 4321,
        "power_factor": inst.power_factor_milli,
        "frequency": inst.frequency_chz,
        "status": 0b1001,
        "keypad_seq": 1,
        "keypad_digits": "98765432109876543210",
        "serial_number": "PE1-0003-000005",
        "firmware_version": 0x0102,
    }


def test_units_convert_kwh_and_kw() -> None:
    layout = LAYOUTS["iem3000"]
    model = MeterModel(1, 1, 1_767_268_800.0, energy_import_wh=123_456)
    model.set_load(2500, 1_767_268_800.0)
    regmap = layout.regmap
    start = layout.tables[Table.HOLDING].start
    values = decode_block(regmap, Table.HOLDING, start, layout.image(Table.HOLDING, model, {}))
    assert values["energy_import"] == 123_456  # i64 Wh
    power = physical(regmap.point("active_power"), values["active_power"])
    assert power == pytest.approx(Decimal("2.5"))  # kW


def test_a_measurement_in_a_wrong_unit_is_refused() -> None:
    regmap = load_map("pe1")
    bad = Point("voltage", Table.INPUT, 9, 1, ValueType.U16, WordOrder.HIGH_FIRST, Decimal(1), "A")
    with pytest.raises(SetupError, match="unit 'A'"):
        source_for(bad, regmap, str)
