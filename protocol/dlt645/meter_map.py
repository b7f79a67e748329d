"""DL/T 645 meter models as data: which data identifiers a model answers, in which format.

A model is a TOML file under ``protocol/maps/`` with ``protocol = "dlt645"`` in its
``[map]`` header (Modbus maps share the folder and the header's shape). Points carry
the canonical names the Modbus maps use (``energy_import``, ``voltage``, ``current``,
``active_power``, ``power_factor``, ``frequency``), a data identifier (``di``, DI3
first) and a format: a BCD number like ``XXXXXX.XX`` (``signed`` for current, power and
power factor), ``bits16`` for a status word with named bits, ``YYMMDDWW`` and
``hhmmss`` for the clock, ``NNNNNNNNNNNN`` for digit strings. Files are validated on
load; every error names the file and the point.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from protocol.dlt645.bcd import BitsFormat, DigitsFormat, NumberFormat
from protocol.dlt645.clock import DateFormat, TimeFormat
from protocol.dlt645.terms import di_text, parse_di
from protocol.errors import DecodeError, MapError
from protocol.regmap import load_toml, shipped_map_names, validation_error

PROTOCOL = "dlt645"

PointFormat = NumberFormat | DigitsFormat | BitsFormat | DateFormat | TimeFormat


class Dlt645Capability(StrEnum):
    """What a DL/T 645 model can do (the values match the Modbus capabilities where the
    meaning is the same)."""

    ENERGY = "energy"
    INSTANTANEOUS = "instantaneous"
    RELAY = "relay"  # trip (1AH) and direct close (1CH) through remote control 1CH
    CLOSE_ALLOWED = "close_allowed"  # 1BH: the customer closes the relay with the button
    PROTECT = "protect"  # 3AH/3BH protected supply: the meter refuses every trip
    ALARM = "alarm"  # 2AH/2BH
    CLOCK = "clock"  # date and time points; broadcast time 08H


#: The status-word bits that say where the relay is and what it was last told.
RELAY_OPEN_BIT = "relay_open"
RELAY_COMMAND_OPEN_BIT = "relay_command_open"
PROTECTED_BIT = "protected"
ALARM_BIT = "alarm"

#: Points (by name) and bits of the point named ``status`` each capability needs.
REQUIRED_POINTS: dict[Dlt645Capability, tuple[str, ...]] = {
    Dlt645Capability.ENERGY: ("energy_import",),
    Dlt645Capability.INSTANTANEOUS: ("voltage", "current", "active_power"),
    Dlt645Capability.RELAY: ("status",),
    Dlt645Capability.CLOSE_ALLOWED: ("status",),
    Dlt645Capability.PROTECT: ("status",),
    Dlt645Capability.ALARM: (),
    Dlt645Capability.CLOCK: ("date", "time"),
}
REQUIRED_BITS: dict[Dlt645Capability, tuple[str, ...]] = {
    Dlt645Capability.RELAY: (RELAY_OPEN_BIT, RELAY_COMMAND_OPEN_BIT),
    Dlt645Capability.CLOSE_ALLOWED: (RELAY_OPEN_BIT, RELAY_COMMAND_OPEN_BIT),
    Dlt645Capability.PROTECT: (PROTECTED_BIT,),
}

#: Units a canonical measurement may be given in, with the factor to its base unit
#: (Wh, V, A, W, 1, Hz).
UNITS: dict[str, dict[str, Decimal]] = {
    "energy": {"kWh": Decimal(1000), "Wh": Decimal(1)},
    "voltage": {"V": Decimal(1)},
    "current": {"A": Decimal(1)},
    "active_power": {"kW": Decimal(1000), "W": Decimal(1)},
    "power_factor": {"": Decimal(1)},
    "frequency": {"Hz": Decimal(1)},
}
#: Fixed formats of canonical points that are not measurements.
_FIXED_FORMATS = {"date": "YYMMDDWW", "time": "hhmmss"}


def family(name: str) -> str | None:
    """The measurement a canonical point name stands for (``current_l2``: ``current``)."""
    for fam in UNITS:
        if name == fam or name.startswith(fam + "_"):
            return fam
    return None


def parse_format(text: str, *, signed: bool = False) -> PointFormat:
    if text == "bits16":
        return BitsFormat()
    if text == "YYMMDDWW":
        return DateFormat()
    if text == "hhmmss":
        return TimeFormat()
    if text.startswith("N"):
        return DigitsFormat.parse(text)
    return NumberFormat.parse(text, signed=signed)


@dataclass(frozen=True, slots=True)
class Dlt645Point:
    """One data identifier of a model: its name, format, unit and (status words) bits."""

    name: str
    di: int
    format: PointFormat
    unit: str = ""
    description: str = ""
    bits: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        """Data bytes after the identifier in a read reply."""
        return self.format.size

    @property
    def di_text(self) -> str:
        return di_text(self.di)

    def number(self, payload: bytes) -> Decimal:
        """A numeric point's value in its unit, exactly."""
        fmt = self.format
        if not isinstance(fmt, NumberFormat):
            raise DecodeError(f"{self.name}: format {fmt.text} is not a number", payload)
        return fmt.value(fmt.decode(payload))

    def base_value(self, payload: bytes) -> Decimal:
        """A canonical measurement in its base unit (Wh, V, A, W, 1, Hz)."""
        fam = family(self.name)
        if fam is None:
            raise DecodeError(f"{self.name}: not a canonical measurement", payload)
        return self.number(payload) * UNITS[fam][self.unit]

    def word(self, payload: bytes) -> int:
        """A status word's 16 bits."""
        if not isinstance(self.format, BitsFormat):
            raise DecodeError(f"{self.name}: format {self.format.text} is not bits16", payload)
        return self.format.decode(payload)

    def flags(self, word: int) -> frozenset[str]:
        """The named bits set in ``word``."""
        return frozenset(name for i, name in enumerate(self.bits) if name and word >> i & 1)


@dataclass(frozen=True, slots=True)
class Dlt645Map:
    """A DL/T 645 meter model, validated."""

    name: str
    title: str
    version: int
    document: str
    capabilities: frozenset[Dlt645Capability]
    points: tuple[Dlt645Point, ...]

    def point(self, name: str) -> Dlt645Point:
        for p in self.points:
            if p.name == name:
                return p
        raise KeyError(f"map {self.name!r} has no point {name!r}")

    def has(self, name: str) -> bool:
        return any(p.name == name for p in self.points)

    def by_di(self, di: int) -> Dlt645Point | None:
        for p in self.points:
            if p.di == di:
                return p
        return None

    @property
    def status_points(self) -> tuple[Dlt645Point, ...]:
        """Every status word (bits16 point)."""
        return tuple(p for p in self.points if isinstance(p.format, BitsFormat))


class _PointFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    di: str = Field(pattern=r"^[0-9A-Fa-f]{8}$", description="DI3 DI2 DI1 DI0, e.g. 00010000")
    format: str
    unit: str = ""
    signed: bool = False
    description: str = ""
    bits: list[str] = Field(default_factory=list, max_length=16)

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        parse_format(v)  # ValueError says what is wrong
        return v

    @field_validator("bits")
    @classmethod
    def _bit_names(cls, v: list[str]) -> list[str]:
        for name in v:
            if name and not name.replace("_", "").isalnum():
                raise ValueError(f"bit name {name!r}: letters, digits and _ only ('' = unused)")
        return v


class _MapHeader(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    protocol: Literal["dlt645"]
    title: str
    version: int = Field(ge=1)
    document: str = Field(min_length=1)
    capabilities: list[Dlt645Capability]


class _MapFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    map: _MapHeader
    points: list[_PointFile] = Field(min_length=1)


def _build_point(raw: _PointFile, source: str) -> Dlt645Point:
    def fail(problem: str) -> MapError:
        return MapError(source, raw.name, problem)

    fmt = parse_format(raw.format, signed=raw.signed)
    if raw.signed and not isinstance(fmt, NumberFormat):
        raise fail(f"only a number can be signed, not format {raw.format}")
    if raw.bits and not isinstance(fmt, BitsFormat):
        raise fail("only a bits16 point names bits")
    names = [b for b in raw.bits if b]
    if len(set(names)) != len(names):
        raise fail("a bit name is used twice")
    fam = family(raw.name)
    if fam is not None:
        if not isinstance(fmt, NumberFormat):
            raise fail(f"a {fam} measurement needs a number format like XXX.X")
        if raw.unit not in UNITS[fam]:
            allowed = ", ".join(repr(u) for u in UNITS[fam])
            raise fail(f"unit {raw.unit!r} is not a {fam} unit ({allowed})")
    fixed = _FIXED_FORMATS.get(raw.name)
    if fixed is not None and raw.format != fixed:
        raise fail(f"the {raw.name} point has format {fixed}")
    if raw.name.startswith("status") and not isinstance(fmt, BitsFormat):
        raise fail("a status word has format bits16")
    return Dlt645Point(
        name=raw.name,
        di=parse_di(raw.di),
        format=fmt,
        unit=raw.unit,
        description=raw.description,
        bits=tuple(raw.bits),
    )


def parse_dlt645_map(text: str, source: str) -> Dlt645Map:
    """Validate a DL/T 645 model's TOML text; ``source`` names it in errors."""
    data = load_toml(text, source)
    try:
        parsed = _MapFile.model_validate(data)
    except ValidationError as exc:
        raise validation_error(source, data, exc) from None
    points = tuple(_build_point(p, source) for p in parsed.points)
    seen: dict[str, Dlt645Point] = {}
    dis: dict[int, str] = {}
    for p in points:
        if p.name in seen:
            raise MapError(source, p.name, "name used twice")
        if p.di in dis:
            raise MapError(source, p.name, f"data identifier {p.di_text} is also {dis[p.di]!r}")
        seen[p.name] = p
        dis[p.di] = p.name
    caps = frozenset(parsed.map.capabilities)
    for cap in sorted(caps):
        for needed in REQUIRED_POINTS[cap]:
            if needed not in seen:
                raise MapError(source, None, f"capability {cap} needs a point named {needed!r}")
        for bit in REQUIRED_BITS.get(cap, ()):
            if bit not in seen["status"].bits:
                raise MapError(source, "status", f"capability {cap} needs a bit named {bit!r}")
    if Dlt645Capability.CLOSE_ALLOWED in caps and Dlt645Capability.RELAY not in caps:
        raise MapError(source, None, "capability close_allowed needs capability relay")
    return Dlt645Map(
        name=parsed.map.name,
        title=parsed.map.title,
        version=parsed.map.version,
        document=parsed.map.document,
        capabilities=caps,
        points=points,
    )


def load_dlt645_map_file(path: Path) -> Dlt645Map:
    """Load and validate a DL/T 645 model file from disk."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MapError(str(path), None, f"cannot read: {exc}") from None
    return parse_dlt645_map(text, str(path))


def shipped_dlt645_map_names() -> list[str]:
    return shipped_map_names(PROTOCOL)


@functools.cache
def load_dlt645_map(name: str) -> Dlt645Map:
    """Load a shipped DL/T 645 model by name (``dlt645_single_phase``, ...)."""
    names = shipped_dlt645_map_names()
    if name not in names:
        raise MapError(name, None, f"unknown DL/T 645 map; shipped: {', '.join(names)}")
    res = resources.files("protocol") / "maps" / f"{name}.toml"
    return parse_dlt645_map(res.read_text(encoding="utf-8"), f"protocol/maps/{name}.toml")
