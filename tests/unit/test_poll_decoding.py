"""The poll path's one decode path (BlockDecoder, then MeterIO.snapshot) gives exactly what point-by-point decode and the exact Decimal unit rules give: values, types and refusals alike."""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.meter_io import MAX_ENERGY_WH, MAX_POWER_W, MAX_VOLTAGE_V, MeterIO, MeterSnapshot
from protocol.codec import BlockDecoder, Value, decode, encode, physical
from protocol.errors import DecodeError
from protocol.messages import MEASURED
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

    # a wrong unit now and then (refused), the right ones mostly
    energy, power = ["Wh", "kWh"] * 3 + ["W"], ["W", "kW"] * 3 + ["V"]
    text = _map_text(spec(energy), spec(power), spec(["V", ""]))
    return parse_map(text, "test")


def reference_snapshot(io: MeterIO, blocks: Sequence[Sequence[int]]) -> MeterSnapshot:
    """The rules written plainly: each point decoded alone, units converted exactly with
    ``Decimal`` (energy rounded down, power to the nearest W), ranges checked."""
    values = {
        p.name: decode(p, regs[p.address - b.start : p.end - b.start])
        for b, regs in zip(io.plan, blocks, strict=True)
        for p in b.points
    }
    regmap = io.regmap

    def exact(name: str, factors: dict[str, int]) -> Decimal:
        point = regmap.point(name)
        if point.unit not in factors:
            raise DecodeError(f"{name}: not a {'/'.join(factors)} unit", ())
        return physical(point, values[name]) * factors[point.unit]

    wh = exact("energy_import", {"Wh": 1, "kWh": 1000}).to_integral_value(ROUND_FLOOR)
    if not 0 <= wh <= MAX_ENERGY_WH:
        raise DecodeError("energy out of range", ())
    power = None
    if "active_power" in values:
        watts = exact("active_power", {"W": 1, "kW": 1000})
        if abs(watts) > MAX_POWER_W:
            raise DecodeError("power out of range", ())
        power = int(watts.to_integral_value(ROUND_HALF_EVEN))
    voltage = None
    if "voltage" in values:
        volts = physical(regmap.point("voltage"), values["voltage"])
        if not 0 <= volts <= Decimal(MAX_VOLTAGE_V):
            raise DecodeError("voltage out of range", ())
        voltage = plain_round(volts, regmap.point("voltage").resolution)
    flags: frozenset[str] = frozenset()
    relay = None
    if "status" in values:
        bits = regmap.point("status").bits
        status = values["status"]
        assert isinstance(status, int)
        flags = frozenset(name for i, name in enumerate(bits) if status >> i & 1)
        relay = "relay_closed" in flags if "relay_closed" in bits else None
    seq, digits = values.get("keypad_seq"), values.get("keypad_digits")
    return MeterSnapshot(
        energy_import_wh=int(wh),
        power_w=power,
        voltage_v=voltage,
        relay_closed=relay,
        flags=flags,
        keypad_seq=seq if isinstance(seq, int) else None,
        keypad_digits=digits if isinstance(digits, str) else None,
        measured=plain_measured(regmap, values),
        resolution_wh=plain_resolution_wh(regmap.point("energy_import"), values["energy_import"]),
    )


def float32(value: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", value))[0])


def plain_round(value: Decimal, resolution: Decimal | None) -> float:
    """To the nearest multiple of the resolution; a float32's shortest digits without one."""
    if resolution is None:
        single = float32(float(value))
        return next(
            float(f"{single:.{p}g}")
            for p in range(1, 18)
            if float32(float(f"{single:.{p}g}")) == single
        )
    return float((value / resolution).to_integral_value(ROUND_HALF_EVEN) * resolution)


def plain_measured(regmap: RegisterMap, values: dict[str, Value]) -> tuple[tuple[str, Any], ...]:
    """Each published point in the field's unit, rounded, left out when no meter reports it."""
    out: list[tuple[str, Any]] = []
    for name, (point_name, unit) in MEASURED.items():
        if not regmap.has(point_name) or not regmap.point(point_name).publish:
            continue
        point = regmap.point(point_name)
        try:
            value = physical(point, values[point_name])
        except DecodeError:
            continue
        value *= {"kW": 1000, "kWh": 1000}.get(point.unit, 1)
        if name == "power_factor" and not -1 <= value <= 1:
            continue
        if abs(value) > 10**9 or (unit == "Wh" and value < 0):
            continue
        if unit == "Wh":
            out.append((name, int(value.to_integral_value(ROUND_FLOOR))))
        elif unit == "W":
            out.append((name, int(value.to_integral_value(ROUND_HALF_EVEN))))
        else:
            out.append((name, plain_round(value, point.resolution)))
    return tuple(out)


def plain_resolution_wh(point: Point, value: Value) -> int:
    """What one count of the energy register is worth in Wh, rounded up (a float32's at
    its value), plus one for the rounding down to whole Wh when that is not exact."""
    factor = {"Wh": 1, "kWh": 1000}[point.unit]
    if point.type is ValueType.F32:
        assert isinstance(value, float)
        bits = struct.unpack(">I", struct.pack(">f", abs(float32(value))))[0]
        above = struct.unpack(">f", struct.pack(">I", bits + 1))[0]
        step = (Decimal(above) - Decimal(float32(abs(value)))) * abs(point.scale) * factor
    else:
        step = abs(point.scale) * factor
    whole = step.to_integral_value(ROUND_CEILING)
    return max(int(whole), 1) if whole == step else int(whole) + 1


def plausible(point: Point) -> st.SearchStrategy[Value]:
    """Values a meter of this point's type may report, mostly within every range."""
    if point.type is ValueType.F32:
        return st.floats(-2e6, 2e6, width=32)
    signed = point.type in (ValueType.I16, ValueType.I32, ValueType.I64)
    bits = 16 * point.count
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    usual = st.integers(max(low, -1000), min(high, 70_000))
    return st.one_of(usual, st.integers(low, high))


@st.composite
def poll_registers(draw: st.DrawFn, io: MeterIO) -> list[list[int]]:
    """Registers of each block of the plan: raw words, or points' plausible values."""
    out = []
    for block in io.plan:
        if draw(st.booleans()):
            out.append(draw(st.lists(WORDS, min_size=block.count, max_size=block.count)))
            continue
        regs = [0] * block.count
        for p in block.points:
            if p.type in (ValueType.BITS16, ValueType.ASCII, ValueType.DIGITS4):
                continue
            a, b = p.address - block.start, p.end - block.start
            regs[a:b] = encode(p, draw(plausible(p)))
        out.append(regs)
    return out


@settings(max_examples=300)
@given(maps(), st.data())
def test_snapshot_equals_the_plain_rules(regmap: RegisterMap, data: st.DataObject) -> None:
    io = MeterIO(regmap)
    blocks = data.draw(poll_registers(io))
    fast = outcome(lambda: io.snapshot(blocks))
    slow = outcome(lambda: reference_snapshot(io, blocks))
    assert fast[0] == slow[0], (fast, slow)
    if fast[0] == "ok":  # voltage compared exactly, its type too (230 == 230.0)
        assert fast[1] == slow[1]
        assert type(fast[1].voltage_v) is type(slow[1].voltage_v)


def _pe1_registers(io: MeterIO, energy: int, power: int, voltage: int) -> list[int]:
    (block,) = io.plan
    regs = [0] * block.count
    points = {p.name: p for p in block.points}
    values: dict[str, Value] = {"energy_import": energy, "voltage": voltage, "active_power": power}
    values |= {"status": 0b1001, "keypad_seq": 7, "keypad_digits": "12345678901234567890"}
    for name, value in values.items():
        p = points[name]
        regs[p.address - block.start : p.end - block.start] = encode(p, value)
    return regs


@given(st.integers(0, 2**64 - 1), st.integers(-(2**31), 2**31 - 1), st.integers(0, 0xFFFF))
def test_pe1_snapshot_of_extreme_registers(energy: int, power: int, voltage: int) -> None:
    io = MeterIO(load_map("pe1"))
    blocks = [_pe1_registers(io, energy, power, voltage)]
    if energy > MAX_ENERGY_WH or abs(power) > MAX_POWER_W:  # no real meter: refused
        with pytest.raises(DecodeError, match="beyond any real"):
            io.snapshot(blocks)
        return
    snap = io.snapshot(blocks)
    assert snap == reference_snapshot(io, blocks)
    assert snap.energy_import_wh == energy
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
