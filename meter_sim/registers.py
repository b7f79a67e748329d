"""Any register map served from the same physics: which value each point shows, and writes.

A :class:`MapLayout` is built once per map. Points are filled by their canonical names
(``energy_import``, ``voltage``, ``current_l2``, ...), converted by the point's ``unit``
and ``scale`` with exact fractions and the simulator's one rounding function, then
encoded with :func:`protocol.codec.encode`. Writable points (PE-1's holding registers and
relay coil) hold what the gateway writes; everything else is read only.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from meter_sim.errors import SetupError
from meter_sim.physics import MeterModel, round_div
from protocol.codec import Value, decode, encode
from protocol.modbus.pdu import ExceptionCode
from protocol.regmap import Point, RegisterMap, Table, ValueType, WordOrder

FIRMWARE_VERSION = 0x0102

#: Modbus exception codes the simulator answers with.
ILLEGAL_FUNCTION = ExceptionCode.ILLEGAL_FUNCTION
ILLEGAL_ADDRESS = ExceptionCode.ILLEGAL_DATA_ADDRESS
ILLEGAL_VALUE = ExceptionCode.ILLEGAL_DATA_VALUE
SERVER_BUSY = ExceptionCode.SERVER_DEVICE_BUSY
GATEWAY_TARGET_FAILED = ExceptionCode.GATEWAY_TARGET_DEVICE_FAILED_TO_RESPOND


class ModbusException(Exception):  # noqa: N818 - it is the Modbus name for the reply
    """A request the meter refuses with a Modbus exception code (the client's fault)."""

    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__(f"modbus exception {code:#04x}")


#: Family of each canonical numeric point: (physics quantity, factor to the family's base unit).
_QUANTITY: dict[str, tuple[str, Fraction]] = {
    "energy_import": ("energy_import", Fraction(1)),
    "energy_export": ("energy_export", Fraction(1)),
    "energy_total": ("energy_total", Fraction(1)),
    "voltage": ("voltage", Fraction(1, 10)),
    "voltage_l1": ("voltage", Fraction(1, 10)),
    "voltage_l2": ("voltage_l2", Fraction(1, 10)),
    "voltage_l3": ("voltage_l3", Fraction(1, 10)),
    "current": ("current", Fraction(1, 1000)),
    "current_l1": ("current", Fraction(1, 1000)),
    "current_l2": ("current", Fraction(1, 1000)),
    "current_l3": ("current", Fraction(1, 1000)),
    "active_power": ("power", Fraction(1)),
    "active_power_l1": ("power_l1", Fraction(1)),
    "active_power_l2": ("power_l2", Fraction(1)),
    "active_power_l3": ("power_l3", Fraction(1)),
    "power_factor": ("power_factor", Fraction(1, 1000)),
    "frequency": ("frequency", Fraction(1, 100)),
}
#: Units each family may be expressed in, with the factor from the family's base unit.
_UNITS: dict[str, dict[str, Fraction]] = {
    "energy": {"Wh": Fraction(1), "kWh": Fraction(1, 1000)},
    "voltage": {"V": Fraction(1)},
    "current": {"A": Fraction(1)},
    "power": {"W": Fraction(1), "kW": Fraction(1, 1000)},
    "power_factor": {"": Fraction(1)},
    "frequency": {"Hz": Fraction(1)},
}
#: Points the gateway may write; they hold what was written.
WRITABLE = frozenset(
    {"keypad_ack", "display_code", "display_credit", "load_limit", "alarm", "credit_lease"}
)


def _family(quantity: str) -> str:
    for fam in ("energy", "voltage", "current", "power_factor", "power", "frequency"):
        if quantity.startswith(fam):
            return fam
    raise AssertionError(quantity)  # pragma: no cover


def quantities(model: MeterModel, three_phase: bool) -> dict[str, int]:
    """Every numeric quantity a map may show, from the model's present state."""
    inst = model.instant()
    out = {
        "energy_import": model.energy_import_wh,
        "energy_export": model.energy_export_wh,
        "energy_total": model.energy_import_wh + model.energy_export_wh,
        "voltage": inst.voltage_dv,
        "voltage_l2": inst.voltage_dv + 3,
        "voltage_l3": inst.voltage_dv - 4,
        "current": inst.current_ma,
        "power": inst.power_w,
        "power_factor": inst.power_factor_milli,
        "frequency": inst.frequency_chz,
    }
    if three_phase:
        # The load is shared by three phases: each carries a third (the parts sum to P).
        third = inst.power_w // 3
        out["power_l1"] = inst.power_w - 2 * third
        out["power_l2"] = out["power_l3"] = third
        out["current"] = round_div(inst.current_ma, 3)
    else:
        out["power_l1"], out["power_l2"], out["power_l3"] = inst.power_w, 0, 0
    return out


Source = Callable[[MeterModel, dict[str, int]], Value]


def _numeric_source(point: Point, quantity: str, factor: Fraction) -> Source:
    num, den = factor.numerator, factor.denominator
    if point.type is ValueType.F32:
        return lambda _m, q: q[quantity] * num / den
    if point.type in (ValueType.BOOL, ValueType.ASCII, ValueType.DIGITS4):
        raise SetupError(f"point {point.name!r}: type {point.type} cannot hold a measurement")
    if factor == 1:
        return lambda _m, q: q[quantity]
    return lambda _m, q: round_div(q[quantity] * num, den)


def _pe1_source(point: Point, regmap: RegisterMap, serial: Callable[[int], str]) -> Source | None:
    match point.name:
        case "map_version":
            version = regmap.version
            return lambda _m, _q: version
        case "status":
            return lambda m, _q: m.status_bits()
        case "keypad_seq":
            return lambda m, _q: m.keypad_seq
        case "keypad_digits":
            return lambda m, _q: m.keypad_digits
        case "serial_number":
            return lambda m, _q: serial(m.unit)
        case "firmware_version":
            return lambda _m, _q: FIRMWARE_VERSION
    return None


def measurement(map_name: str, name: str, unit: str) -> tuple[str, Fraction] | None:
    """(the :func:`quantities` key, the factor from it to ``unit``) of a canonical point
    name; None when the name is not a measurement. Any protocol's maps use it."""
    if name not in _QUANTITY:
        return None
    quantity, base = _QUANTITY[name]
    units = _UNITS[_family(quantity)]
    if unit not in units:
        raise SetupError(
            f"map {map_name!r} point {name!r}: unit {unit!r} is not one of {sorted(units)}"
        )
    return quantity, base * units[unit]


def source_for(point: Point, regmap: RegisterMap, serial: Callable[[int], str]) -> Source | None:
    """How to fill a read-only point, or None for a point the simulator leaves at zero."""
    special = _pe1_source(point, regmap, serial)
    if special is not None:
        return special
    found = measurement(regmap.name, point.name, point.unit)
    if found is None:
        return None
    quantity, factor = found
    return _numeric_source(point, quantity, factor / Fraction(point.scale))


#: Produces the struct arguments of one point from (model, quantities, stored registers).
Part = Callable[[MeterModel, dict[str, int], dict[int, int]], tuple[Any, ...]]

_CODES: dict[ValueType, str] = {
    ValueType.U16: "H",
    ValueType.I16: "h",
    ValueType.BITS16: "H",
    ValueType.U32: "I",
    ValueType.I32: "i",
    ValueType.U64: "Q",
    ValueType.I64: "q",
    ValueType.F32: "f",
}


@functools.lru_cache(maxsize=4096)
def _digit_groups(digits: str, n: int) -> tuple[int, ...]:
    return tuple(int(digits[4 * i : 4 * i + 4]) for i in range(n))


def _stored_part(point: Point) -> Part:
    addresses = tuple(range(point.address, point.end))
    return lambda _m, _q, s: tuple(s.get(a, 0) for a in addresses)


def _computed_part(point: Point, src: Source) -> tuple[str, Part]:
    """The struct code and argument maker of a computed point (same bytes as codec.encode)."""
    if point.type is ValueType.ASCII:
        return f"{2 * point.count}s", lambda m, q, _s: (str(src(m, q)).encode("ascii"),)
    if point.type is ValueType.DIGITS4:
        n = point.count
        return "H" * n, lambda m, q, _s: _digit_groups(str(src(m, q)), n)
    if point.count == 1 or point.word_order is WordOrder.HIGH_FIRST:
        return _CODES[point.type], lambda m, q, _s: (src(m, q),)
    if point.type in (ValueType.U32, ValueType.I32):

        def low_first(m: MeterModel, q: dict[str, int], _s: dict[int, int]) -> tuple[int, int]:
            u = int(src(m, q)) & 0xFFFFFFFF
            return u & 0xFFFF, u >> 16

        return "HH", low_first
    return "H" * point.count, lambda m, q, _s: tuple(encode(point, src(m, q)))


@dataclass(slots=True)
class TableLayout:
    """One table of a map: its address span and how each point gets its registers."""

    start: int
    count: int
    computed: list[tuple[Point, Source]] = field(default_factory=list)
    writable: list[Point] = field(default_factory=list)
    writable_offsets: frozenset[int] = frozenset()
    status_offset: int | None = None
    packer: struct.Struct | None = None  # the whole register table in one pack
    parts: list[Part] = field(default_factory=list)

    @property
    def end(self) -> int:
        return self.start + self.count

    def compile(self) -> None:
        """Build one struct for the whole table: the fast path of every register read."""
        items: list[tuple[Point, Source | None]] = [*self.computed]
        items += [(p, None) for p in self.writable]
        items.sort(key=lambda item: item[0].address)
        fmt = [">"]
        pos = self.start
        for point, src in items:
            if point.address > pos:
                fmt.append(f"{2 * (point.address - pos)}x")
            if src is None:
                fmt.append("H" * point.count)
                self.parts.append(_stored_part(point))
            else:
                code, part = _computed_part(point, src)
                fmt.append(code)
                self.parts.append(part)
            pos = point.end
        if pos < self.end:
            fmt.append(f"{2 * (self.end - pos)}x")
        self.packer = struct.Struct("".join(fmt))


class MapLayout:
    """How one register map is served from :class:`MeterModel` state."""

    def __init__(self, regmap: RegisterMap, seed: int) -> None:
        self.regmap = regmap
        self.seed = seed
        self.three_phase = regmap.has("current_l2") or regmap.has("active_power_l2")
        self.tables: dict[Table, TableLayout] = {}
        for table in Table:
            pts = regmap.points_in(table)
            if not pts:
                continue
            start, count = regmap.span(table)
            layout = TableLayout(start, count)
            offsets: set[int] = set()
            for p in pts:
                if p.name in WRITABLE or (table is Table.COIL and p.name == "relay"):
                    layout.writable.append(p)
                    offsets.update(range(p.address - start, p.end - start))
                    continue
                src = source_for(p, regmap, self.serial_number)
                if src is not None:
                    layout.computed.append((p, src))
                if p.name == "status":
                    layout.status_offset = p.address - start
            layout.writable_offsets = frozenset(offsets)
            if not table.is_bit_table:
                layout.compile()
            self.tables[table] = layout

    @functools.lru_cache(maxsize=1024)  # noqa: B019 - one layout per simulator, lives as long
    def serial_number(self, unit: int) -> str:
        return f"PE1-{self.seed % 10000:04d}-{unit:06d}"

    def image_bytes(self, table: Table, model: MeterModel, stored: dict[int, int]) -> bytes:
        """The whole register table now, packed big-endian: what :meth:`image` encodes."""
        layout = self.tables[table]
        assert layout.packer is not None
        q = quantities(model, self.three_phase) if layout.computed else {}
        args: list[Any] = []
        for part in layout.parts:
            args += part(model, q, stored)
        return layout.packer.pack(*args)

    def image(self, table: Table, model: MeterModel, stored: dict[int, int]) -> list[int]:
        """The whole table's registers (or bits) now, through :func:`protocol.codec.encode`.

        The reference the fast :meth:`image_bytes` is tested against, and the coil path.
        """
        layout = self.tables[table]
        regs = [0] * layout.count
        if layout.computed:
            q = quantities(model, self.three_phase)
            for p, src in layout.computed:
                off = p.address - layout.start
                regs[off : off + p.count] = encode(p, src(model, q))
        for p in layout.writable:
            off = p.address - layout.start
            if p.name == "relay":
                regs[off] = int(model.relay_closed)
            else:
                for i in range(p.count):
                    regs[off + i] = stored.get(p.address + i, 0)
        return regs

    def _check_read(self, table: Table, address: int, count: int) -> TableLayout:
        layout = self.tables.get(table)
        if layout is None or address < layout.start or address + count > layout.end:
            raise ModbusException(ILLEGAL_ADDRESS)
        return layout

    def _status_read(self, layout: TableLayout, off: int, count: int, model: MeterModel) -> None:
        if layout.status_offset is not None and off <= layout.status_offset < off + count:
            model.button_latched = False  # PE-1: the button latch clears once it was read

    def read_registers(
        self,
        table: Table,
        address: int,
        count: int,
        *,
        model: MeterModel,
        stored: dict[int, int],
        now: float,
    ) -> bytes:
        """Registers ``address .. address+count-1`` as big-endian bytes; 0x02 outside the span."""
        layout = self._check_read(table, address, count)
        model.advance(now)
        off = address - layout.start
        data = self.image_bytes(table, model, stored)[2 * off : 2 * (off + count)]
        self._status_read(layout, off, count, model)
        return data

    def read_bits(
        self,
        table: Table,
        address: int,
        count: int,
        *,
        model: MeterModel,
        stored: dict[int, int],
        now: float,
    ) -> list[int]:
        """Coils or discrete inputs as 0/1; 0x02 outside the span."""
        layout = self._check_read(table, address, count)
        model.advance(now)
        off = address - layout.start
        return self.image(table, model, stored)[off : off + count]

    def write(
        self,
        table: Table,
        address: int,
        values: list[int],
        *,
        model: MeterModel,
        stored: dict[int, int],
        now: float,
        relay_actuates: bool = True,
    ) -> None:
        """Apply a write of registers (or bits as 0/1); 0x02 unless every address is writable."""
        layout = self.tables.get(table)
        if layout is None or not layout.writable:
            raise ModbusException(ILLEGAL_ADDRESS)
        offs = range(address - layout.start, address - layout.start + len(values))
        if address < layout.start or any(o not in layout.writable_offsets for o in offs):
            raise ModbusException(ILLEGAL_ADDRESS)
        if table is Table.COIL:
            if relay_actuates:
                model.set_relay(bool(values[0]), now)
            else:
                model.advance(now)
            return
        for i, v in enumerate(values):
            stored[address + i] = v
        end = address + len(values)
        for p in layout.writable:
            if p.address < end and p.end > address:
                regs = [stored.get(a, 0) for a in range(p.address, p.end)]
                value = decode(p, regs)
                if p.name == "keypad_ack" and isinstance(value, int):
                    model.acknowledge_keypad(value, now)
                elif p.name == "load_limit" and isinstance(value, int):
                    model.set_load_limit(value, now)
                elif p.name == "credit_lease" and isinstance(value, int):
                    model.set_lease(value, now)
        model.advance(now)
