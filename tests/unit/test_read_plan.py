"""Read plans cover every requested point in as few legal requests as possible, and snapshots convert units once (energy in whole Wh, rounded down)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.meter_io import MeterIO, energy_wh, power_w
from protocol.errors import DecodeError
from protocol.read_plan import MAX_REGISTERS, plan_reads
from protocol.regmap import Point, RegisterMap, Table, ValueType, WordOrder, load_map
from tests.support.register_images import encode_block


def test_pe1_poll_is_one_request() -> None:
    pe1 = load_map("pe1")
    plan = plan_reads(
        pe1, ["energy_import", "active_power", "voltage", "status", "keypad_seq", "keypad_digits"]
    )
    assert [(b.table, b.start, b.count) for b in plan] == [(Table.INPUT, 1, 22)]


@given(st.data())
def test_plan_covers_points_within_limits(data: st.DataObject) -> None:
    pe1 = load_map("pe1")
    names = data.draw(
        st.lists(st.sampled_from([p.name for p in pe1.points]), min_size=1, unique=True)
    )
    gap = data.draw(st.integers(0, 40))
    plan = plan_reads(pe1, names, max_gap=gap)
    covered = {p.name for b in plan for p in b.points}
    assert covered == set(names)
    for b in plan:
        assert 1 <= b.count <= MAX_REGISTERS
        for p in b.points:
            assert b.start <= p.address
            assert p.end <= b.start + b.count
            assert p.table is b.table


def test_far_apart_points_are_split() -> None:
    far = [
        Point("a", Table.INPUT, 0, 2, ValueType.F32, WordOrder.HIGH_FIRST, Decimal(1), "V"),
        Point("b", Table.INPUT, 0x156, 2, ValueType.F32, WordOrder.HIGH_FIRST, Decimal(1), "kWh"),
    ]
    m = RegisterMap("x", "x", 1, "doc", frozenset(), tuple(far))
    assert [(b.start, b.count) for b in plan_reads(m, ["a", "b"])] == [(0, 2), (0x156, 2)]


def _pt(unit: str, vtype: ValueType = ValueType.F32, scale: str = "1") -> Point:
    return Point(
        "energy_import", Table.INPUT, 0, 2, vtype, WordOrder.HIGH_FIRST, Decimal(scale), unit
    )


def test_energy_units_convert_to_whole_wh_rounded_down() -> None:
    assert energy_wh(_pt("kWh"), 1.2345) == 1234
    assert energy_wh(_pt("Wh", ValueType.U32), 987) == 987
    assert energy_wh(_pt("kWh", ValueType.I32, "0.1"), 12345) == 1_234_500
    with pytest.raises(DecodeError, match="not an energy unit"):
        energy_wh(_pt("V"), 1.0)
    with pytest.raises(DecodeError, match="negative"):
        energy_wh(_pt("kWh"), -1.0)
    assert power_w(_pt("kW"), 1.5) == 1500


def test_pe1_snapshot() -> None:
    pe1 = load_map("pe1")
    _, image = encode_block(
        pe1,
        Table.INPUT,
        {
            "energy_import": 5000,
            "active_power": -20,
            "voltage": 2300,
            "status": 0b1001,
            "keypad_seq": 9,
            "keypad_digits": "00000000000000000042",
        },
    )
    (block,) = MeterIO(pe1).plan
    snap = MeterIO(pe1).snapshot([image[block.start : block.start + block.count]])
    assert snap.energy_import_wh == 5000
    assert snap.power_w == -20
    assert snap.voltage_v == pytest.approx(230.0)
    assert snap.relay_closed is True
    assert snap.flags == {"relay_closed", "keypad_pending"}
    assert snap.keypad_seq == 9
    assert snap.keypad_digits == "00000000000000000042"
