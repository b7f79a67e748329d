"""The measured values a reading carries beyond energy, power and voltage: the points a
register map publishes (``Point.publish``), each in its reading field's unit and rounded
to the point's resolution, so that an SDM120's float32 voltage is published as 199.8 and
not as 199.8000030517578.

A value no real meter reports (not a number, a power factor beyond 1) is left out of the
reading rather than failing it: the energy is what bills, the rest is information.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal

from protocol.codec import Value, physical
from protocol.errors import DecodeError, MapError
from protocol.messages import FIELD_OF_POINT, MEASURED
from protocol.regmap import Point, RegisterMap

#: (the point's unit, the field's unit) -> the factor between them.
_FACTORS = {
    ("W", "W"): 1,
    ("kW", "W"): 1000,
    ("Wh", "Wh"): 1,
    ("kWh", "Wh"): 1000,
}
#: Fields published as whole numbers (W, Wh).
_WHOLE = frozenset({"W", "Wh"})
#: |value| beyond this is garbage, whatever the unit.
_LIMIT = Decimal(1_000_000_000)
#: Every point a reading carries a value of, by canonical name, with the reading field it
#: fills: voltage and active power in version 1's own fields, the rest as ``MEASURED`` says.
READING_POINTS: dict[str, str] = {
    "voltage": "voltage_v",
    "active_power": "power_w",
    **FIELD_OF_POINT,
}
#: A field's value.
Number = int | float
#: One point's raw value -> its field's value, or None to leave it out.
Convert = Callable[[Value], Number | None]


def float32_text(value: float) -> float:
    """The shortest decimal that reads back as the same float32 (a float32 register's own
    digits, when the map gives no resolution)."""
    single = struct.unpack(">f", struct.pack(">f", value))[0]
    for digits in range(1, 10):
        shortest = float(f"{single:.{digits}g}")
        if struct.unpack(">f", struct.pack(">f", shortest))[0] == single:
            return shortest
    return float(single)


def rounded(value: Decimal, resolution: Decimal | None, whole: bool, floor: bool) -> Number:
    """``value`` rounded to a multiple of ``resolution`` (a whole number for W and Wh)."""
    if whole:
        return int(value.to_integral_value(ROUND_FLOOR if floor else ROUND_HALF_EVEN))
    if resolution is None:
        return float32_text(float(value))
    steps = (value / resolution).to_integral_value(ROUND_HALF_EVEN)
    return float(steps * resolution)


def decimal_fraction(scale: Decimal) -> tuple[int, int] | None:
    """``scale`` as ``(m, d)``, ``scale == m / d`` with ``d`` a power of ten, if it has at
    most 4 digits: then ``Decimal`` products with a 64-bit register stay within its 28
    digits, exact, like int arithmetic."""
    sign, digits, exponent = scale.as_tuple()
    if not isinstance(exponent, int) or len(digits) > 4 or not -12 <= exponent <= 6:
        return None
    m = int("".join(map(str, digits))) * (-1 if sign else 1)
    return (m * 10**exponent, 1) if exponent >= 0 else (m, 10**-exponent)


@dataclass(frozen=True, slots=True)
class FieldRule:
    """How a value in a point's unit becomes a reading field's value: the unit's factor,
    the field's bounds (beyond them is garbage, left out) and its rounding. The one rule
    for every protocol's points."""

    field: str
    factor: int
    whole: bool
    floor: bool
    low: Decimal
    high: Decimal

    def value(self, value: Decimal, resolution: Decimal | None) -> Number | None:
        """``value`` (in the point's unit, ``resolution`` too) as the field's value, or
        None when no real meter reports it."""
        scaled = value * self.factor
        if not self.low <= scaled <= self.high:
            return None
        step = None if resolution is None else resolution * self.factor
        return rounded(scaled, step, self.whole, self.floor)


@functools.cache
def field_rule(field: str, unit: str, point: str) -> FieldRule:
    """The rule for ``field`` from a point (named ``point``) in ``unit`` (MapError for a
    unit the field cannot take)."""
    field_unit = MEASURED[field][1]
    factor = _FACTORS.get((unit, field_unit), 1 if unit == field_unit else None)
    if factor is None:
        raise MapError(point, point, f"unit {unit!r} cannot be published in {field_unit}")
    floor = field_unit == "Wh"  # a cumulative register, rounded down as the energy is
    low = Decimal(0) if floor else Decimal(-1) if field == "power_factor" else -_LIMIT
    high = Decimal(1) if field == "power_factor" else _LIMIT
    return FieldRule(field, factor, field_unit in _WHOLE, floor, low, high)


def converter(point: Point, field: str) -> Convert:
    """How ``point``'s raw value becomes ``field``'s (MapError for a unit it cannot take)."""
    rule = field_rule(field, point.unit, point.name)
    exact = convert_exactly(point, rule, point.resolution)
    fraction = decimal_fraction(point.scale) if point.resolution == point.scale else None
    if fraction is None or fraction[0] == 0:
        return exact
    m, d = fraction[0] * rule.factor, fraction[1]
    if rule.whole and d != 1:
        return exact
    # An integer register at its own resolution: ``raw * m / d`` is the correctly rounded
    # float of the exact value (``raw * m`` for W and Wh), with no Decimal: the PE-1's
    # every reading.
    raw_low, raw_high = sorted((rule.low * d / m, rule.high * d / m))
    whole = rule.whole

    def scaled(raw: Value) -> Number | None:
        if type(raw) is not int:
            return exact(raw)
        if not raw_low <= raw <= raw_high:
            return None
        return raw * m if whole else raw * m / d

    return scaled


def convert_exactly(point: Point, rule: FieldRule, resolution: Decimal | None) -> Convert:
    """The exact conversion (floats, other scales), through ``Decimal``."""

    def convert(raw: Value) -> Number | None:
        try:
            value = physical(point, raw)
        except (DecodeError, TypeError):
            return None
        return rule.value(value, resolution)

    return convert


def published(regmap: RegisterMap) -> list[Point]:
    """The points of ``regmap`` that readings carry, in the order of the reading's fields."""
    order = list(FIELD_OF_POINT)
    return sorted((p for p in regmap.points if p.publish), key=lambda p: order.index(p.name))


def reading_fields(regmap: object) -> list[str]:
    """The reading fields a meter of ``regmap`` fills beyond energy, power and the relay
    (none for a model that is not a Modbus register map, such as a DL/T 645 one)."""
    if not isinstance(regmap, RegisterMap):
        return []
    voltage = ["voltage_v"] if regmap.has("voltage") else []
    return voltage + [FIELD_OF_POINT[p.name] for p in published(regmap)]


class Measured:
    """The published points of one map, read from decoded values in plan order."""

    def __init__(self, points: Sequence[Point], at: dict[str, int]) -> None:
        self.fields = [
            (FIELD_OF_POINT[p.name], at[p.name], converter(p, FIELD_OF_POINT[p.name]))
            for p in points
        ]

    def values(self, decoded: Sequence[Value]) -> tuple[tuple[str, Number], ...]:
        out = []
        for field, i, convert in self.fields:
            value = convert(decoded[i])
            if value is not None:
                out.append((field, value))
        return tuple(out)
