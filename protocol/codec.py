"""Decode 16-bit registers into typed values and encode them back.

Pure functions over :class:`~protocol.regmap.Point`: the gateway decodes what a
meter sent, the simulator encodes what it serves. Bad registers raise
:class:`~protocol.errors.DecodeError` carrying the raw input; a value that does not
fit its point raises :class:`~protocol.errors.EncodeError`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from decimal import Decimal

from protocol.errors import DecodeError, EncodeError
from protocol.regmap import Point, ValueType, WordOrder

#: A decoded value: integers for integer types and bits, float for f32,
#: str for ascii and digit groups, bool for coils.
Value = int | float | str | bool

_INT_FORMATS: dict[ValueType, str] = {
    ValueType.U16: ">H",
    ValueType.I16: ">h",
    ValueType.BITS16: ">H",
    ValueType.U32: ">I",
    ValueType.I32: ">i",
    ValueType.U64: ">Q",
    ValueType.I64: ">q",
}


def _check_registers(point: Point, regs: Sequence[int]) -> None:
    if len(regs) != point.count:
        raise DecodeError(f"{point.name}: expected {point.count} registers, got {len(regs)}", regs)
    for r in regs:
        if not 0 <= r <= 0xFFFF:
            raise DecodeError(f"{point.name}: register value {r} is not 16-bit", regs)


def _words_to_bytes(point: Point, regs: Sequence[int]) -> bytes:
    ordered = regs if point.word_order is WordOrder.HIGH_FIRST else list(reversed(regs))
    return b"".join(r.to_bytes(2, "big") for r in ordered)


def _bytes_to_words(point: Point, data: bytes) -> list[int]:
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    return words if point.word_order is WordOrder.HIGH_FIRST else list(reversed(words))


def decode(point: Point, regs: Sequence[int]) -> Value:
    """Decode the registers of one point (``len(regs) == point.count``)."""
    if point.type is ValueType.BOOL:
        if len(regs) != 1 or regs[0] not in (0, 1):
            raise DecodeError(f"{point.name}: a bit must be one value 0 or 1", regs)
        return bool(regs[0])
    _check_registers(point, regs)
    if point.type in _INT_FORMATS:
        (value,) = struct.unpack(_INT_FORMATS[point.type], _words_to_bytes(point, regs))
        return int(value)
    if point.type is ValueType.F32:
        (fvalue,) = struct.unpack(">f", _words_to_bytes(point, regs))
        if not math.isfinite(fvalue):
            raise DecodeError(f"{point.name}: float is not finite ({fvalue})", regs)
        return float(fvalue)
    if point.type is ValueType.ASCII:
        raw = b"".join(r.to_bytes(2, "big") for r in regs)
        text = raw.rstrip(b"\x00")
        if b"\x00" in text or any(b < 0x20 or b > 0x7E for b in text):
            raise DecodeError(f"{point.name}: not printable zero-padded ASCII", regs)
        return text.decode("ascii")
    if point.type is ValueType.DIGITS4:
        if any(r > 9999 for r in regs):
            raise DecodeError(f"{point.name}: a digit group is above 9999", regs)
        return "".join(f"{r:04d}" for r in regs)
    raise DecodeError(f"{point.name}: unsupported type {point.type}", regs)  # pragma: no cover


_FAST_INT_CODES: dict[ValueType, str] = {t: f[1] for t, f in _INT_FORMATS.items()}
_AS_IS, _F32, _DIGITS, _ASCII, _GENERIC = range(5)


class BlockDecoder:
    """Decodes the points of one block read with one precompiled ``struct`` call.

    The poll path decodes the same block of every meter of a model thousands of times
    a second; ``decode`` point by point costs more than the Modbus exchange. Results
    and errors are those of :func:`decode` on each point's registers: points
    ``struct`` cannot express (bits, low-first multi-register values) and registers
    that do not pack (wrong count, not 16-bit) go through :func:`decode` itself.
    """

    def __init__(self, points: Sequence[Point], start: int, count: int) -> None:
        self.points = tuple(points)
        self.start = start
        self.count = count
        self._pack = struct.Struct(f">{count}H").pack
        # Points whose struct items are not their value as is: (kind, first item, items,
        # register slice) in point order; the rest of the unpacked tuple is the result.
        steps: list[tuple[int, int, int, int, int, Point]] = []
        fmt, at, item = [">"], start, 0
        for p in self.points:
            a, b = p.address - start, p.end - start
            if p.address < at or b > count or p.table.is_bit_table:
                fmt, steps = [], []  # out of order, overlapping or bits: point by point
                break
            fmt.append(f"{2 * (p.address - at)}x")
            at = p.end
            if p.type in _FAST_INT_CODES and (p.count == 1 or p.word_order is WordOrder.HIGH_FIRST):
                fmt.append(_FAST_INT_CODES[p.type])
                item += 1
            elif p.type is ValueType.F32 and p.word_order is WordOrder.HIGH_FIRST:
                fmt.append("f")
                steps.append((_F32, item, 1, a, b, p))
                item += 1
            elif p.type is ValueType.DIGITS4:
                fmt.append(f"{p.count}H")
                steps.append((_DIGITS, item, p.count, a, b, p))
                item += p.count
            elif p.type is ValueType.ASCII:
                fmt.append(f"{2 * p.count}s")
                steps.append((_ASCII, item, 1, a, b, p))
                item += 1
            else:
                fmt.append(f"{2 * p.count}x")
                steps.append((_GENERIC, item, 0, a, b, p))
        self._unpack = struct.Struct("".join(fmt)).unpack if fmt else None
        self._steps = tuple(steps)
        #: digit groups seen lately and their text (a keypad reads the same most of the time)
        self._digits: dict[tuple[int, ...], str] = {}

    def decode(self, regs: Sequence[int]) -> tuple[Value, ...]:
        """The values of ``self.points``, in that order, from the block's registers."""
        unpack = self._unpack
        if unpack is None:
            return self._point_by_point(regs)
        try:
            raw = unpack(self._pack(*regs))
        except struct.error:
            return self._point_by_point(regs)  # raises what decode raises (or copes)
        if not self._steps:
            return raw
        out: list[Value] = list(raw)
        shift = 0  # items replaced so far minus values put in their place
        for kind, i, n, a, b, p in self._steps:
            j = i - shift
            value: Value
            if kind == _F32:
                fvalue: float = raw[i]
                if not math.isfinite(fvalue):
                    raise DecodeError(f"{p.name}: float is not finite ({fvalue})", regs[a:b])
                value = fvalue
            elif kind == _DIGITS:
                groups = raw[i : i + n]
                found = self._digits.get(groups)
                if found is None:
                    if max(groups) > 9999:
                        raise DecodeError(f"{p.name}: a digit group is above 9999", regs[a:b])
                    if len(self._digits) >= 256:
                        self._digits.clear()
                    found = self._digits[groups] = ("%04d" * n) % groups
                value = found
            elif kind == _ASCII:
                text = raw[i].rstrip(b"\x00")
                if b"\x00" in text or any(c < 0x20 or c > 0x7E for c in text):
                    raise DecodeError(f"{p.name}: not printable zero-padded ASCII", regs[a:b])
                value = text.decode("ascii")
            else:
                value = decode(p, regs[a:b])
            out[j : j + n] = [value]
            shift += n - 1
        return tuple(out)

    def _point_by_point(self, regs: Sequence[int]) -> tuple[Value, ...]:
        start = self.start
        return tuple(decode(p, regs[p.address - start : p.end - start]) for p in self.points)


def encode(point: Point, value: Value) -> list[int]:
    """Encode one value into the point's registers (or a single 0/1 for a bit)."""
    if point.type is ValueType.BOOL:
        if not isinstance(value, bool):
            raise EncodeError(f"{point.name}: a bit takes a bool, not {value!r}")
        return [int(value)]
    if point.type in _INT_FORMATS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise EncodeError(f"{point.name}: {point.type} takes an int, not {value!r}")
        try:
            data = struct.pack(_INT_FORMATS[point.type], value)
        except struct.error:
            raise EncodeError(f"{point.name}: {value} does not fit {point.type}") from None
        return _bytes_to_words(point, data)
    if point.type is ValueType.F32:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise EncodeError(f"{point.name}: f32 takes a number, not {value!r}")
        if not math.isfinite(value):
            raise EncodeError(f"{point.name}: f32 takes a finite number, not {value!r}")
        try:
            data = struct.pack(">f", value)
        except OverflowError:
            raise EncodeError(f"{point.name}: {value} overflows f32") from None
        return _bytes_to_words(point, data)
    if point.type is ValueType.ASCII:
        if not isinstance(value, str):
            raise EncodeError(f"{point.name}: ascii takes a str, not {value!r}")
        if any(not 0x20 <= ord(c) <= 0x7E for c in value) or len(value) > 2 * point.count:
            raise EncodeError(
                f"{point.name}: needs printable ASCII of at most {2 * point.count} chars"
            )
        raw = value.encode("ascii").ljust(2 * point.count, b"\x00")
        return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    if point.type is ValueType.DIGITS4:
        width = 4 * point.count
        if not isinstance(value, str) or len(value) != width or not value.isdigit():
            raise EncodeError(f"{point.name}: needs exactly {width} decimal digits")
        if not value.isascii():
            raise EncodeError(f"{point.name}: needs ASCII decimal digits")
        return [int(value[i : i + 4]) for i in range(0, width, 4)]
    raise EncodeError(f"{point.name}: unsupported type {point.type}")  # pragma: no cover


def integer_range(point: Point) -> tuple[int, int] | None:
    """The smallest and largest raw value an integer point holds (None for other types)."""
    fmt = _INT_FORMATS.get(point.type)
    if fmt is None:
        return None
    bits = 8 * struct.calcsize(fmt)
    if fmt[-1].islower():  # signed
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def physical(point: Point, value: Value) -> Decimal:
    """A numeric value in the point's unit: raw times scale, exact for integer types."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{point.name}: {value!r} is not numeric")
    if isinstance(value, float) and not math.isfinite(value):
        raise DecodeError(f"{point.name}: {value} is not a finite number", ())
    raw = Decimal(value) if isinstance(value, int) else Decimal(repr(value))
    return raw * point.scale


def bit(point: Point, value: int, flag: str) -> bool:
    """One named flag of a bits16 value."""
    return bool(value >> point.bits.index(flag) & 1)
