"""Register maps as data: what a meter model exposes over Modbus, where and how.

A meter model is never a subclass: it is a TOML file under ``protocol/maps/``,
validated when loaded into a frozen :class:`RegisterMap`. Errors name the file,
the point and the problem, so a field engineer can fix a map without our code.
"""

from __future__ import annotations

import functools
import itertools
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from protocol.errors import MapError
from protocol.messages import FIELD_OF_POINT


class Table(StrEnum):
    """The four Modbus data tables."""

    COIL = "coil"
    DISCRETE_INPUT = "discrete_input"
    INPUT = "input"
    HOLDING = "holding"

    @property
    def is_bit_table(self) -> bool:
        return self in (Table.COIL, Table.DISCRETE_INPUT)


class ValueType(StrEnum):
    """How a point's registers encode its value."""

    U16 = "u16"
    I16 = "i16"
    U32 = "u32"
    I32 = "i32"
    U64 = "u64"
    I64 = "i64"
    F32 = "f32"
    BITS16 = "bits16"  # a u16 whose bits are named flags
    ASCII = "ascii"  # two characters per register, high byte first, zero padded
    DIGITS4 = "digits4"  # each register a number 0..9999 holding four decimal digits
    BOOL = "bool"  # one coil or discrete input


class WordOrder(StrEnum):
    """Order of 16-bit words in a multi-register value (bytes in a word are always big-endian)."""

    HIGH_FIRST = "high_first"
    LOW_FIRST = "low_first"


class Capability(StrEnum):
    """What a meter model can do; provisioning refuses prepaid enrolment without RELAY."""

    ENERGY = "energy"
    INSTANTANEOUS = "instantaneous"
    RELAY = "relay"
    KEYPAD = "keypad"
    DISPLAY = "display"
    TAMPER = "tamper"


#: Registers taken by each fixed-width type.
FIXED_WIDTH: dict[ValueType, int] = {
    ValueType.U16: 1,
    ValueType.I16: 1,
    ValueType.BITS16: 1,
    ValueType.U32: 2,
    ValueType.I32: 2,
    ValueType.F32: 2,
    ValueType.U64: 4,
    ValueType.I64: 4,
    ValueType.BOOL: 1,
}

#: Points a capability needs, by name, so the gateway can find them in any map.
REQUIRED_POINTS: dict[Capability, tuple[str, ...]] = {
    Capability.ENERGY: ("energy_import",),
    Capability.INSTANTANEOUS: ("voltage", "current", "active_power"),
    Capability.RELAY: ("relay",),
    Capability.KEYPAD: ("keypad_seq", "keypad_digits", "keypad_ack", "status"),
    Capability.DISPLAY: ("display_code", "display_credit"),
    Capability.TAMPER: ("status",),
}


@dataclass(frozen=True, slots=True)
class Point:
    """One named value: its table, address, type and the scale to physical units."""

    name: str
    table: Table
    address: int
    count: int
    type: ValueType
    word_order: WordOrder
    scale: Decimal
    unit: str
    description: str = ""
    bits: tuple[str, ...] = ()
    #: one meaning per name of ``bits`` (docs/pe1.md shows them), or none
    bit_descriptions: tuple[str, ...] = ()
    #: the extension that added this point after the map's version, "" for the version's own
    extension: str = ""
    #: whether readings carry it (the field of ``protocol.messages.MEASURED`` that names it)
    publish: bool = False
    #: the step its published value is rounded to, in its unit (an integer register's is
    #: its scale; a float's is the map's ``resolution``, or the float32's own digits)
    resolution: Decimal | None = None

    @property
    def end(self) -> int:
        """One past the last address the point occupies."""
        return self.address + self.count


@dataclass(frozen=True, slots=True)
class RegisterMap:
    """A meter model's whole register map, validated."""

    name: str
    title: str
    version: int
    document: str
    capabilities: frozenset[Capability]
    points: tuple[Point, ...]
    #: points by name: the gateway asks has()/point() for every reading
    _by_name: dict[str, Point] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {p.name: p for p in reversed(self.points)})

    def point(self, name: str) -> Point:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"map {self.name!r} has no point {name!r}") from None

    def has(self, name: str) -> bool:
        return name in self._by_name

    def points_in(self, table: Table) -> tuple[Point, ...]:
        return tuple(sorted((p for p in self.points if p.table is table), key=lambda p: p.address))

    def span(self, table: Table) -> tuple[int, int]:
        """(start, count) of one read covering every point of ``table``."""
        pts = self.points_in(table)
        if not pts:
            raise KeyError(f"map {self.name!r} has no points in table {table}")
        start = pts[0].address
        return start, max(p.end for p in pts) - start


class _PointFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    table: Table
    address: int = Field(ge=0, le=0xFFFF)
    type: ValueType
    count: int | None = Field(default=None, ge=1, le=125)
    word_order: WordOrder | None = None
    scale: str = "1"
    unit: str = ""
    description: str = ""
    bits: list[str] = Field(default_factory=list)
    bit_descriptions: list[str] = Field(default_factory=list)
    extension: str = ""
    publish: bool | None = None
    resolution: str | None = None

    @field_validator("scale", "resolution")
    @classmethod
    def _scale_is_decimal(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return v
        try:
            d = Decimal(v)
        except InvalidOperation:
            raise ValueError(f"{info.field_name} {v!r} is not a decimal number") from None
        if not d.is_finite() or d == 0:
            raise ValueError(f"{info.field_name} {v!r} must be a finite non-zero decimal")
        return v


class _MapHeader(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    protocol: Literal["modbus"] = "modbus"
    title: str
    version: int = Field(ge=1)
    document: str = Field(min_length=1)
    capabilities: list[Capability]
    word_order: WordOrder = WordOrder.HIGH_FIRST


class _MapFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    map: _MapHeader
    points: list[_PointFile] = Field(min_length=1)


def _point_name(data: dict[str, Any], loc: tuple[int | str, ...]) -> str | None:
    if len(loc) >= 2 and loc[0] == "points" and isinstance(loc[1], int):
        try:
            name = data["points"][loc[1]].get("name")
        except (KeyError, IndexError, AttributeError, TypeError):
            return f"#{loc[1] + 1}"
        return str(name) if name is not None else f"#{loc[1] + 1}"
    return None


def validation_error(source: str, data: dict[str, Any], exc: ValidationError) -> MapError:
    """The first problem pydantic found in a map file, naming the file and the point."""
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    field = ".".join(str(part) for part in loc)
    return MapError(source, _point_name(data, loc), f"{field}: {err['msg']}")


def load_toml(text: str, source: str) -> dict[str, Any]:
    """A map file's TOML, or MapError naming the file."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MapError(source, None, f"not valid TOML: {exc}") from None


def _build_point(raw: _PointFile, default_order: WordOrder, source: str) -> Point:
    def fail(problem: str) -> MapError:
        return MapError(source, raw.name, problem)

    if raw.type is ValueType.BOOL and not raw.table.is_bit_table:
        raise fail("type bool belongs in a coil or discrete_input table")
    if raw.table.is_bit_table and raw.type is not ValueType.BOOL:
        raise fail(f"a {raw.table} holds single bits: its type must be bool")
    if raw.type in FIXED_WIDTH:
        count = FIXED_WIDTH[raw.type]
        if raw.count is not None and raw.count != count:
            raise fail(f"type {raw.type} takes {count} register(s), not {raw.count}")
    elif raw.count is None:
        raise fail(f"type {raw.type} needs a count")
    else:
        count = raw.count
    if raw.address + count > 0x10000:
        raise fail("runs past address 65535")
    if raw.bits and raw.type is not ValueType.BITS16:
        raise fail("only a bits16 point names bits")
    if len(raw.bits) > 16:
        raise fail("a bits16 point names at most 16 bits")
    if raw.bit_descriptions and len(raw.bit_descriptions) != len(raw.bits):
        raise fail("bit_descriptions needs one description per bit")
    publishable = raw.name in FIELD_OF_POINT
    if raw.publish and not publishable:
        raise fail(
            f"readings have no field for it (they publish {', '.join(sorted(FIELD_OF_POINT))})"
        )
    resolution = Decimal(raw.resolution) if raw.resolution is not None else None
    if resolution is not None and resolution <= 0:
        raise fail(f"resolution {raw.resolution!r} must be above zero")
    if resolution is None and raw.type not in (ValueType.F32, ValueType.BOOL, ValueType.ASCII):
        resolution = abs(Decimal(raw.scale))
    return Point(
        name=raw.name,
        table=raw.table,
        address=raw.address,
        count=count,
        type=raw.type,
        word_order=raw.word_order or default_order,
        scale=Decimal(raw.scale),
        unit=raw.unit,
        description=raw.description,
        bits=tuple(raw.bits),
        bit_descriptions=tuple(raw.bit_descriptions),
        extension=raw.extension,
        publish=publishable and raw.publish is not False,
        resolution=resolution,
    )


def parse_map(text: str, source: str) -> RegisterMap:
    """Validate a map file's TOML text; ``source`` names it in errors."""
    data = load_toml(text, source)
    try:
        parsed = _MapFile.model_validate(data)
    except ValidationError as exc:
        raise validation_error(source, data, exc) from None
    points = tuple(_build_point(p, parsed.map.word_order, source) for p in parsed.points)
    seen: dict[str, Point] = {}
    for p in points:
        if p.name in seen:
            raise MapError(source, p.name, "name used twice")
        seen[p.name] = p
    for table in Table:
        ordered = sorted((p for p in points if p.table is table), key=lambda p: p.address)
        for before, after in itertools.pairwise(ordered):
            if after.address < before.end:
                raise MapError(source, after.name, f"overlaps point {before.name!r}")
    caps = frozenset(parsed.map.capabilities)
    for cap in caps:
        for needed in REQUIRED_POINTS[cap]:
            if needed not in seen:
                raise MapError(source, None, f"capability {cap} needs a point named {needed!r}")
    return RegisterMap(
        name=parsed.map.name,
        title=parsed.map.title,
        version=parsed.map.version,
        document=parsed.map.document,
        capabilities=caps,
        points=points,
    )


def load_map_file(path: Path) -> RegisterMap:
    """Load and validate a map file from disk."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MapError(str(path), None, f"cannot read: {exc}") from None
    return parse_map(text, str(path))


@functools.cache
def _shipped_protocols() -> dict[str, str]:
    """Each map shipped in ``protocol/maps`` with its protocol (``[map] protocol``, by
    default ``modbus``): Modbus and DL/T 645 models share the folder."""
    folder = resources.files("protocol") / "maps"
    out: dict[str, str] = {}
    for f in folder.iterdir():
        if not f.name.endswith(".toml"):
            continue
        try:
            header = tomllib.loads(f.read_text(encoding="utf-8")).get("map", {})
        except tomllib.TOMLDecodeError:
            header = {}  # loading it reports the problem
        protocol = header.get("protocol", "modbus") if isinstance(header, dict) else "modbus"
        out[f.name.removesuffix(".toml")] = str(protocol)
    return out


def shipped_map_names(protocol: str = "modbus") -> list[str]:
    """Names of the maps shipped in ``protocol/maps`` for one protocol (Modbus by default)."""
    return sorted(name for name, p in _shipped_protocols().items() if p == protocol)


def load_map(name: str) -> RegisterMap:
    """Load a shipped map by name (``pe1``, ``sdm120``, ...)."""
    if name not in shipped_map_names():
        raise MapError(name, None, f"unknown map; shipped maps: {', '.join(shipped_map_names())}")
    res = resources.files("protocol") / "maps" / f"{name}.toml"
    return parse_map(res.read_text(encoding="utf-8"), f"protocol/maps/{name}.toml")
