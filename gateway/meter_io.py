"""Read and act on one meter through its register map: the gateway's meter driver on the wire.

Any map works: points are found by their canonical names (``energy_import``,
``active_power``, ``status`` ...), units are converted here once (energy to integer Wh,
rounded down so that deltas of a cumulative register never charge energy twice), and
the reads are planned per map. A failed or undecodable read raises
:class:`~gateway.modbus_port.MeterIOError` and yields no snapshot at all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal

from gateway.measured import Measured, Number, decimal_fraction, published, rounded
from gateway.modbus_port import IOFailure, MeterIOError, ModbusPort
from protocol import modbus
from protocol.codec import BlockDecoder, Value, encode, physical
from protocol.errors import DecodeError
from protocol.read_plan import BlockRead, plan_reads
from protocol.regmap import Point, RegisterMap, Table, ValueType

_POLLED = (
    "energy_import",
    "active_power",
    "voltage",
    "status",
    "keypad_seq",
    "keypad_digits",
)
_ENERGY_FACTORS = {"Wh": Decimal(1), "kWh": Decimal(1000)}
_POWER_FACTORS = {"W": Decimal(1), "kW": Decimal(1000)}
#: The widest integers the ledger and the JSON contract take (a JSON number a headend in
#: any language reads exactly): an energy register beyond it is a lie, not a reading.
MAX_ENERGY_WH = (1 << 53) - 1
#: |power| beyond this (a gigawatt on a customer's meter) is garbage, not a reading.
MAX_POWER_W = 1_000_000_000
#: Voltages outside 0..this are garbage too.
MAX_VOLTAGE_V = 100_000.0


@dataclass(frozen=True, slots=True)
class MeterSnapshot:
    """One good read of a meter: what the core needs, in integer base units."""

    energy_import_wh: int
    power_w: int | None
    voltage_v: float | None
    relay_closed: bool | None
    flags: frozenset[str]
    keypad_seq: int | None
    keypad_digits: str | None
    #: the other points the map publishes, by reading field (``protocol.messages.MEASURED``)
    measured: tuple[tuple[str, Number], ...] = ()
    #: the energy register's step in Wh (what one count of it is worth, rounded up)
    resolution_wh: int = 1


def energy_wh(point: Point, value: Value) -> int:
    """A cumulative energy register in whole Wh, rounded down."""
    factor = _ENERGY_FACTORS.get(point.unit)
    if factor is None:
        raise DecodeError(f"{point.name}: unit {point.unit!r} is not an energy unit", ())
    wh = (physical(point, value) * factor).to_integral_value(ROUND_FLOOR)
    if wh < 0:
        raise DecodeError(f"{point.name}: negative energy {wh} Wh", ())
    return _energy_in_range(point, int(wh))


def _energy_in_range(point: Point, wh: int) -> int:
    if wh > MAX_ENERGY_WH:
        raise DecodeError(f"{point.name}: {wh} Wh is beyond any real register", ())
    return wh


def power_w(point: Point, value: Value) -> int:
    factor = _POWER_FACTORS.get(point.unit)
    if factor is None:
        raise DecodeError(f"{point.name}: unit {point.unit!r} is not a power unit", ())
    watts = physical(point, value) * factor
    if abs(watts) > MAX_POWER_W:
        raise DecodeError(f"{point.name}: {watts} W is beyond any real load", ())
    return int(watts.to_integral_value(ROUND_HALF_EVEN))


def voltage_v(point: Point, value: Value) -> float:
    """The voltage rounded to the point's resolution (a float32's own digits without one)."""
    volts = physical(point, value)
    if not 0 <= volts <= MAX_VOLTAGE_V:
        raise DecodeError(f"{point.name}: {volts} V is not a supply voltage", ())
    return float(rounded(volts, point.resolution, False, False))


def float_resolution_wh(point: Point, value: Value) -> int:
    """One step of a float32 energy register at ``value``, in whole Wh rounded up, plus the
    Wh that rounding down to whole Wh may add: a float32 counting kWh steps by about
    8 Wh past 65,536 kWh."""
    factor = _ENERGY_FACTORS.get(point.unit, Decimal(1))
    magnitude = abs(float(value)) if isinstance(value, int | float) else 0.0
    exponent = math.frexp(magnitude)[1] if math.isfinite(magnitude) and magnitude else -126
    return whole_wh_step(Decimal(2) ** (max(exponent, -125) - 24) * abs(point.scale) * factor)


def whole_wh_step(step: Decimal) -> int:
    """A register step of ``step`` Wh as whole Wh: itself when whole, else rounded up plus
    the Wh that rounding readings down to whole Wh may add."""
    whole = step.to_integral_value(ROUND_CEILING)
    return max(int(whole), 1) if whole == step else int(whole) + 1


def _read_request(unit: int, block: BlockRead) -> modbus.Request:
    if block.table is Table.INPUT:
        return modbus.read_input(unit, block.start, block.count)
    if block.table is Table.HOLDING:
        return modbus.read_holding(unit, block.start, block.count)
    if block.table is Table.COIL:
        return modbus.read_coils(unit, block.start, block.count)
    return modbus.Request(unit, modbus.Function.READ_DISCRETE_INPUTS, block.start, block.count)


def _integral_factor(point: Point, factors: dict[str, Decimal]) -> int | None:
    """``scale * unit factor`` when it is an integer (and ``scale`` short), else None."""
    factor = factors.get(point.unit)
    fraction = decimal_fraction(point.scale)
    if factor is None or fraction is None:
        return None
    m, d = fraction
    k = m * int(factor)  # the unit factors are integers
    return k // d if k % d == 0 else None


class _SnapshotRecipe:
    """Decoded point values (in plan order) to a snapshot, worked out once per map.

    Integer registers with decimal scales convert with int arithmetic, which gives the
    same results as the exact ``Decimal`` conversions above (an int product is exact; an
    int true division is correctly rounded, as is ``float(Decimal)``); anything else
    (floats, other scales, values out of range, with their errors) goes through them.
    """

    def __init__(self, regmap: RegisterMap, names: list[str]) -> None:
        self.regmap = regmap
        self.names = names
        at = {name: i for i, name in enumerate(names)}
        self.energy = regmap.point("energy_import") if "energy_import" in at else None
        self.energy_at = at.get("energy_import", -1)
        self.energy_k = _integral_factor(self.energy, _ENERGY_FACTORS) if self.energy else None
        if self.energy_k is not None and self.energy_k < 0:
            self.energy_k = None  # a negative scale: energy_wh refuses it with its message
        self.power = regmap.point("active_power") if "active_power" in at else None
        self.power_at = at.get("active_power", -1)
        self.power_k = _integral_factor(self.power, _POWER_FACTORS) if self.power else None
        #: raw integers the int paths take without a range check (the rest go the exact way)
        self.power_raw_max = MAX_POWER_W // abs(self.power_k) if self.power_k else 0
        self.voltage = regmap.point("voltage") if "voltage" in at else None
        self.voltage_at = at.get("voltage", -1)
        self.voltage_md = decimal_fraction(self.voltage.scale) if self.voltage else None
        self.voltage_raw_max = (
            int(MAX_VOLTAGE_V) * self.voltage_md[1] // self.voltage_md[0]
            if self.voltage_md and self.voltage_md[0] > 0
            else -1
        )
        self.status = regmap.point("status") if "status" in at else None
        self.status_at = at.get("status", -1)
        self.status_mask = (1 << len(self.status.bits)) - 1 if self.status else 0
        self.relay_bit = self.status is not None and "relay_closed" in self.status.bits
        self.flags: dict[int, frozenset[str]] = {}
        self.seq_at = at.get("keypad_seq", -1)
        self.digits_at = at.get("keypad_digits", -1)
        self.measured = Measured([p for p in published(regmap) if p.name in at], at)
        self.float_energy = self.energy is not None and self.energy.type is ValueType.F32
        self.resolution_wh = 1
        if self.energy is not None and not self.float_energy:
            factor = _ENERGY_FACTORS.get(self.energy.unit, Decimal(1))
            self.resolution_wh = whole_wh_step(abs(self.energy.scale) * factor)

    def snapshot(self, values: Sequence[Value]) -> MeterSnapshot:
        if self.energy is None:
            raise KeyError("energy_import")  # no snapshot without energy
        raw = values[self.energy_at]
        if self.energy_k is not None and type(raw) is int and raw >= 0:
            energy = _energy_in_range(self.energy, raw * self.energy_k)
        else:
            energy = energy_wh(self.energy, raw)  # floats, other units, negative: exactly so
        power: int | None = None
        if self.power is not None:
            raw = values[self.power_at]
            if self.power_k is not None and type(raw) is int and abs(raw) <= self.power_raw_max:
                power = raw * self.power_k
            else:
                power = power_w(self.power, raw)
        voltage: float | None = None
        if self.voltage is not None:
            raw = values[self.voltage_at]
            if (
                self.voltage_md is not None
                and type(raw) is int
                and 0 <= raw <= self.voltage_raw_max
            ):
                m, d = self.voltage_md
                voltage = raw * m / d
            else:
                voltage = voltage_v(self.voltage, raw)
        flags: frozenset[str] = frozenset()
        relay: bool | None = None
        if self.status is not None:
            raw = values[self.status_at]
            assert isinstance(raw, int)
            bits = raw & self.status_mask
            cached = self.flags.get(bits)
            if cached is None:
                names = self.status.bits
                cached = self.flags[bits] = frozenset(
                    name for i, name in enumerate(names) if bits >> i & 1
                )
            flags = cached
            if self.relay_bit:
                relay = "relay_closed" in flags
        seq = values[self.seq_at] if self.seq_at >= 0 else None
        digits = values[self.digits_at] if self.digits_at >= 0 else None
        return MeterSnapshot(
            energy_import_wh=energy,
            power_w=power,
            voltage_v=voltage,
            relay_closed=relay,
            flags=flags,
            keypad_seq=seq if isinstance(seq, int) else None,
            keypad_digits=digits if isinstance(digits, str) else None,
            measured=self.measured.values(values) if self.measured.fields else (),
            resolution_wh=(
                float_resolution_wh(self.energy, values[self.energy_at])
                if self.float_energy
                else self.resolution_wh
            ),
        )


class MeterIO:
    """Reads and writes of one meter model (register map) on any port."""

    def __init__(self, regmap: RegisterMap) -> None:
        self.regmap = regmap
        polled = [n for n in _POLLED if regmap.has(n)] + [p.name for p in published(regmap)]
        self.plan = plan_reads(regmap, polled)
        self._decoders = [BlockDecoder(b.points, b.start, b.count) for b in self.plan]
        self._recipe = _SnapshotRecipe(regmap, [p.name for b in self.plan for p in b.points])
        self._requests: dict[int, list[modbus.Request]] = {}

    @property
    def status_reports_relay(self) -> bool:
        """Whether the status register tells the relay's position (PE-1 bit 0): then a
        reading, not the coil read back, is what says where the contacts are."""
        return self._recipe.relay_bit

    def snapshot(self, blocks: Sequence[Sequence[int]]) -> MeterSnapshot:
        """The one way registers become a reading: the registers read for each block of
        :attr:`plan`, in order, to a snapshot; raises
        :class:`~protocol.errors.DecodeError` for registers no real meter sends."""
        if len(blocks) == 1:  # the usual case: one block holds every polled point
            return self._recipe.snapshot(self._decoders[0].decode(blocks[0]))
        values: list[Value] = []
        for regs, decoder in zip(blocks, self._decoders, strict=True):
            values += decoder.decode(regs)
        return self._recipe.snapshot(values)

    async def read(self, port: ModbusPort, unit: int) -> MeterSnapshot:
        """One whole read of the meter; a value the ledger cannot take (not a number, out
        of any real range) fails it as ``invalid_value``: nothing from it is used."""
        requests = self._requests.get(unit)
        if requests is None:
            requests = [_read_request(unit, block) for block in self.plan]
            self._requests[unit] = requests
        if len(requests) == 1:
            blocks: list[Sequence[int]] = [await port.request(requests[0])]
        else:
            blocks = [await port.request(request) for request in requests]
        try:
            return self.snapshot(blocks)
        except DecodeError as exc:
            raise MeterIOError(unit, IOFailure.INVALID_VALUE, str(exc)) from exc

    async def write_points(self, port: ModbusPort, unit: int, values: dict[str, Value]) -> None:
        """Write holding-register points, contiguous ones in one request."""
        points = sorted((self.regmap.point(n) for n in values), key=lambda p: p.address)
        if any(p.table is not Table.HOLDING for p in points):
            raise ValueError("only holding registers are writable")
        encoded = [(p, encode(p, values[p.name])) for p in points]
        run: list[int] = []
        start = -1
        for p, regs in encoded:
            if run and p.address == start + len(run) and len(run) + len(regs) <= 123:
                run += regs
                continue
            if run:
                await port.request(modbus.write_registers(unit, start, run))
            start, run = p.address, list(regs)
        if run:
            await port.request(modbus.write_registers(unit, start, run))
