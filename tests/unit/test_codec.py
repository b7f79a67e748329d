"""The register codec round-trips every type and word order, matches golden images, and rejects bad registers with their raw input."""

from __future__ import annotations

import math
import struct
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.codec import Value, bit, decode, encode, physical
from protocol.errors import DecodeError, EncodeError
from protocol.regmap import FIXED_WIDTH, Point, Table, ValueType, WordOrder, load_map
from tests.support.register_images import decode_block, encode_block

_INT_RANGES: dict[ValueType, tuple[int, int]] = {
    ValueType.U16: (0, 2**16 - 1),
    ValueType.I16: (-(2**15), 2**15 - 1),
    ValueType.BITS16: (0, 2**16 - 1),
    ValueType.U32: (0, 2**32 - 1),
    ValueType.I32: (-(2**31), 2**31 - 1),
    ValueType.U64: (0, 2**64 - 1),
    ValueType.I64: (-(2**63), 2**63 - 1),
}


def _point(vtype: ValueType, order: WordOrder = WordOrder.HIGH_FIRST, count: int = 0) -> Point:
    table = Table.COIL if vtype is ValueType.BOOL else Table.INPUT
    return Point(
        name="p",
        table=table,
        address=0,
        count=count or FIXED_WIDTH.get(vtype, 1),
        type=vtype,
        word_order=order,
        scale=Decimal(1),
        unit="",
    )


orders = st.sampled_from(list(WordOrder))


@st.composite
def int_cases(draw: st.DrawFn) -> tuple[Point, int]:
    vtype = draw(st.sampled_from(list(_INT_RANGES)))
    lo, hi = _INT_RANGES[vtype]
    return _point(vtype, draw(orders)), draw(st.integers(lo, hi))


@given(int_cases())
def test_integers_round_trip(case: tuple[Point, int]) -> None:
    point, value = case
    regs = encode(point, value)
    assert len(regs) == point.count
    assert all(0 <= r <= 0xFFFF for r in regs)
    assert decode(point, regs) == value


@given(orders, st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_f32_round_trips(order: WordOrder, value: float) -> None:
    point = _point(ValueType.F32, order)
    assert decode(point, encode(point, value)) == value


@given(
    st.integers(1, 16).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=2 * n),
        )
    )
)
def test_ascii_round_trips(case: tuple[int, str]) -> None:
    count, text = case
    point = _point(ValueType.ASCII, count=count)
    assert decode(point, encode(point, text.rstrip("\x00"))) == text


@given(
    st.integers(1, 8).flatmap(
        lambda n: st.tuples(
            st.just(n), st.text(alphabet="0123456789", min_size=4 * n, max_size=4 * n)
        )
    )
)
def test_digit_groups_round_trip(case: tuple[int, str]) -> None:
    count, digits = case
    point = _point(ValueType.DIGITS4, count=count)
    assert decode(point, encode(point, digits)) == digits


@given(st.booleans())
def test_bits_round_trip(value: bool) -> None:
    point = _point(ValueType.BOOL)
    assert decode(point, encode(point, value)) is value


@given(int_cases(), st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=6))
def test_any_registers_decode_or_raise_decode_error(
    case: tuple[Point, int], regs: list[int]
) -> None:
    point, _ = case
    try:
        value = decode(point, regs)
    except DecodeError as exc:
        assert exc.raw == tuple(regs)
    else:
        assert len(regs) == point.count
        assert encode(point, value) == regs


@given(st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=2))
def test_f32_registers_decode_finite_or_reject(regs: list[int]) -> None:
    point = _point(ValueType.F32)
    try:
        value = decode(point, regs)
    except DecodeError:
        (raw,) = struct.unpack(">f", bytes.fromhex(f"{regs[0]:04x}{regs[1]:04x}"))
        assert not math.isfinite(raw)
    else:
        assert isinstance(value, float)


# Golden register images.
@pytest.mark.parametrize(
    ("vtype", "order", "value", "regs"),
    [
        (ValueType.F32, WordOrder.HIGH_FIRST, 230.0, [0x4366, 0x0000]),  # SDM120 voltage
        (ValueType.F32, WordOrder.LOW_FIRST, 230.0, [0x0000, 0x4366]),
        (ValueType.F32, WordOrder.HIGH_FIRST, 50.0, [0x4248, 0x0000]),
        (ValueType.I32, WordOrder.LOW_FIRST, 2301, [0x08FD, 0x0000]),  # EM24 voltage x10
        (ValueType.I32, WordOrder.LOW_FIRST, -2, [0xFFFE, 0xFFFF]),
        (ValueType.I32, WordOrder.HIGH_FIRST, -1500, [0xFFFF, 0xFA24]),
        (ValueType.U64, WordOrder.HIGH_FIRST, 123_456_789, [0, 0, 0x075B, 0xCD15]),
        (ValueType.I16, WordOrder.HIGH_FIRST, -980, [0xFC2C]),
    ],
)
def test_golden_images(vtype: ValueType, order: WordOrder, value: Value, regs: list[int]) -> None:
    point = _point(vtype, order)
    assert encode(point, value) == regs
    assert decode(point, regs) == value


def test_pe1_block_golden_image() -> None:
    pe1 = load_map("pe1")
    start, image = encode_block(
        pe1,
        Table.INPUT,
        {
            "map_version": 1,
            "energy_import": 1_234_567,
            "voltage": 2301,
            "current": 4350,
            "active_power": 980,
            "power_factor": 981,
            "frequency": 5002,
            "status": 0b1001,
            "keypad_seq": 7,
            "keypad_digits": "12345678901234567890",
            "serial_number": "PE1-0000042",
            "firmware_version": 0x0102,
        },
    )
    assert start == 0
    assert len(image) == 32
    assert image[0] == 1
    assert image[1:5] == [0, 0, 0x0012, 0xD687]
    assert image[9] == 2301
    assert image[18:23] == [1234, 5678, 9012, 3456, 7890]
    assert image[23] == 0x5045  # "PE"
    values = decode_block(pe1, Table.INPUT, 0, image)
    assert values["serial_number"] == "PE1-0000042"
    assert values["keypad_digits"] == "12345678901234567890"
    assert physical(pe1.point("voltage"), values["voltage"]) == Decimal("230.1")
    assert physical(pe1.point("current"), values["current"]) == Decimal("4.350")
    status = pe1.point("status")
    assert bit(status, 0b1001, "relay_closed")
    assert bit(status, 0b1001, "keypad_pending")
    assert not bit(status, 0b1001, "cover_open")


def test_decode_block_skips_points_outside_the_read() -> None:
    pe1 = load_map("pe1")
    values = decode_block(pe1, Table.INPUT, 16, [0b1, 3, 0, 0, 0, 0, 1])
    assert set(values) == {"status", "keypad_seq", "keypad_digits"}


@pytest.mark.parametrize(
    ("vtype", "regs", "problem"),
    [
        (ValueType.U32, [1], "expected 2 registers"),
        (ValueType.U16, [0x10000], "not 16-bit"),
        (ValueType.F32, [0x7FC0, 0], "not finite"),
    ],
)
def test_bad_registers_raise_with_raw(vtype: ValueType, regs: list[int], problem: str) -> None:
    with pytest.raises(DecodeError, match=problem) as info:
        decode(_point(vtype), regs)
    assert info.value.raw == tuple(regs)


def test_bad_digit_group_and_ascii_rejected() -> None:
    with pytest.raises(DecodeError, match="above 9999"):
        decode(_point(ValueType.DIGITS4, count=2), [1234, 10000])
    with pytest.raises(DecodeError, match="ASCII"):
        decode(_point(ValueType.ASCII, count=2), [0x4100, 0x4141])


@pytest.mark.parametrize(
    ("vtype", "value"),
    [
        (ValueType.U16, 65536),
        (ValueType.U16, -1),
        (ValueType.I16, 1.5),
        (ValueType.U32, True),
        (ValueType.F32, math.nan),
        (ValueType.F32, 1e39),
        (ValueType.BOOL, 1),
    ],
)
def test_values_that_do_not_fit_are_refused(vtype: ValueType, value: Value) -> None:
    with pytest.raises(EncodeError):
        encode(_point(vtype), value)
