"""The poll path's precompiled decoding (BlockDecoder, MeterIO's snapshot recipe) gives exactly what point-by-point decode and snapshot_from give, values and errors alike."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.meter_io import MAX_ENERGY_WH, MAX_POWER_W, MeterIO, MeterSnapshot, snapshot_from
from protocol.codec import BlockDecoder, Value, decode
from protocol.errors import DecodeError
from protocol.regmap import (
    Point,
    RegisterMap,
    Table,
    ValueType,
    WordOrder,
    load_map,
    parse_map,
    shipped_map_names,
)

MAPS = [load_map(name) for name in shipped_map_names()]


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """A value, or the type and message of the error it raised."""
    try:
        return "ok", call()
    except (DecodeError, ArithmeticError, KeyError, AssertionError, TypeError) as exc:
        return type(exc).__name__, str(exc)


def blocks(regmap: RegisterMap) -> list[tuple[tuple[Point, ...], int, int]]:
    """The poll plan's blocks and, per register table, one block of the whole table."""
    out = [(b.points, b.start, b.count) for b in MeterIO(regmap).plan]
    for table in (Table.INPUT, Table.HOLDING):
        if regmap.points_in(table):
            start, count = regmap.span(table)
            out.append((regmap.points_in(table), start, count))
    return out


CASES = [(m.name, *b) for m in MAPS for b in blocks(m)]
#: registers that often hit the edges: 0, 0xFFFF, the largest digit group, NaN halves
WORDS = st.one_of(st.integers(0, 0xFFFF), st.sampled_from([0, 9999, 10000, 0x7F80, 0xFFFF]))


@pytest.mark.parametrize(("name", "points", "start", "count"), CASES)
@given(data=st.data())
def test_block_decoder_equals_point_by_point_decode(
    name: str, points: tuple[Point, ...], start: int, count: int, data: st.DataObject
) -> None:
    regs = data.draw(st.lists(WORDS, min_size=count, max_size=count))
    fast = outcome(lambda: BlockDecoder(points, start, count).decode(regs))
    slow = outcome(
        lambda: tuple(decode(p, regs[p.address - start : p.end - start]) for p in points)
    )
    assert fast == slow
    if fast[0] == "ok":  # same types too (1 == 1.0 == True in Python)
        assert [type(v) for v in fast[1]] == [type(v) for v in slow[1]]


@given(
    st.lists(st.integers(-1, 0x10000), min_size=0, max_size=30),
    st.sampled_from([m for m in MAPS if m.name == "pe1"]),
)
def test_block_decoder_refuses_bad_registers_like_decode(
    regs: list[int], regmap: RegisterMap
) -> None:
    """Wrong counts and values that are not 16-bit: the same DecodeError (or the same
    values, for a reply longer than the block) as before."""
    (block,) = MeterIO(regmap).plan
    fast = outcome(lambda: BlockDecoder(block.points, block.start, block.count).decode(regs))
    slow = outcome(
        lambda: tuple(
            decode(p, regs[p.address - block.start : p.end - block.start]) for p in block.points
        )
    )
    assert fast == slow


def _map_text(
    energy: tuple[str, str, str], power: tuple[str, str, str], voltage: tuple[str, str, str]
) -> str:
    def point(name: str, address: int, spec: tuple[str, str, str]) -> str:
        vtype, scale, unit = spec
        return (
            f'[[points]]\nname = "{name}"\ntable = "input"\naddress = {address}\n'
            f'type = "{vtype}"\nscale = "{scale}"\nunit = "{unit}"\n'
        )

    return (
        '[map]\nname = "t"\ntitle = "t"\nversion = 1\ndocument = "t"\n'
        'capabilities = ["energy", "tamper"]\n'
        + point("energy_import", 0, energy)
        + point("active_power", 4, power)
        + point("voltage", 8, voltage)
        + '[[points]]\nname = "status"\ntable = "input"\naddress = 12\ntype = "bits16"\n'
        'bits = ["relay_closed", "cover_open", "keypad_pending"]\n'
    )


SCALES = [
    "1",
    "0.1",
    "0.01",
    "0.001",
    "10",
    "1E+1",
    "0.25",
    "2.5",
    "-1",
    "0.1000000",
    "123456",
    "0.3",
]
TYPES = ["u16", "i16", "u32", "i32", "u64", "i64", "f32"]


@st.composite
def maps(draw: st.DrawFn) -> RegisterMap:
    def spec(units: list[str]) -> tuple[str, str, str]:
        return (
            draw(st.sampled_from(TYPES)),
            draw(st.sampled_from(SCALES)),
            draw(st.sampled_from(units)),
        )

    text = _map_text(spec(["Wh", "kWh", "W"]), spec(["W", "kW", "V"]), spec(["V", ""]))
    return parse_map(text, "test")


def _snapshot_equal(a: MeterSnapshot, b: MeterSnapshot) -> bool:
    # voltage may be NaN-free float; compare exactly, types included
    return a == b and type(a.voltage_v) is type(b.voltage_v)


@given(maps(), st.data())
def test_snapshot_recipe_equals_snapshot_from(regmap: RegisterMap, data: st.DataObject) -> None:
    io = MeterIO(regmap)
    values: list[Value] = []
    for block in io.plan:
        regs = data.draw(st.lists(WORDS, min_size=block.count, max_size=block.count))
        try:
            values += BlockDecoder(block.points, block.start, block.count).decode(regs)
        except DecodeError:
            return  # both paths refuse the registers themselves (tested above)
    names = [p.name for b in io.plan for p in b.points]
    fast = outcome(lambda: io._recipe.snapshot(values))
    slow = outcome(lambda: snapshot_from(regmap, dict(zip(names, values, strict=True))))
    assert fast[0] == slow[0]
    if fast[0] == "ok":
        assert _snapshot_equal(fast[1], slow[1])
    else:
        assert fast == slow


@given(st.integers(0, 2**64 - 1), st.integers(-(2**31), 2**31 - 1), st.integers(0, 0xFFFF))
def test_pe1_snapshot_from_extreme_registers(energy: int, power: int, voltage: int) -> None:
    io = MeterIO(load_map("pe1"))
    names = [p.name for b in io.plan for p in b.points]
    values: list[Value] = [energy, voltage, power, 0b1001, 7, "12345678901234567890"]
    if energy > MAX_ENERGY_WH or abs(power) > MAX_POWER_W:  # no real meter: both refuse
        with pytest.raises(DecodeError, match="beyond any real"):
            io._recipe.snapshot(values)
        with pytest.raises(DecodeError, match="beyond any real"):
            snapshot_from(io.regmap, dict(zip(names, values, strict=True)))
        return
    snap = io._recipe.snapshot(values)
    assert snap == snapshot_from(io.regmap, dict(zip(names, values, strict=True)))
    assert snap.voltage_v == float(Decimal(voltage) * Decimal("0.1"))
    assert snap.flags == frozenset({"relay_closed", "keypad_pending"})


def test_low_first_and_unordered_points_fall_back_to_decode() -> None:
    em24 = load_map("em24")
    for block in MeterIO(em24).plan:
        regs = list(range(1, block.count + 1))
        assert BlockDecoder(block.points, block.start, block.count).decode(regs) == tuple(
            decode(p, regs[p.address - block.start : p.end - block.start]) for p in block.points
        )
    p = Point("a", Table.INPUT, 2, 1, ValueType.U16, WordOrder.HIGH_FIRST, Decimal(1), "")
    q = Point("b", Table.INPUT, 0, 2, ValueType.U32, WordOrder.HIGH_FIRST, Decimal(1), "")
    assert BlockDecoder((p, q), 0, 3).decode([1, 2, 3]) == (3, 0x10002)
