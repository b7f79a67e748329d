"""`meter-provision scan --bus NAME`: probe unit ids on a bus and name each responder's map.

A PE-1 answers input register 0 (map_version) with 1. A third-party meter is recognised
by reading, with each shipped map, its voltages, frequency and energy: a map fits when all
of them are plausible, and the fitting map that explains the most points is named (a
guess, and the table says so).
Probes use short timeouts; an RS-485 line answers one request at a time. Ctrl-C or
SIGTERM stops a scan with the table of what answered so far.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gateway.public import IOFailure, MeterIOError, ModbusPort, RtuBus, RtuPort, TcpPort, energy_wh
from protocol import modbus
from protocol.cli import Subcommands, add_config_option
from protocol.codec import Value, decode, physical
from protocol.errors import DecodeError
from protocol.modbus import ExceptionReplyError
from protocol.regmap import RegisterMap, Table, load_map, shipped_map_names
from provisioning.dlt645_site import run_dlt645_scan
from provisioning.errors import ProvisionError
from provisioning.interrupt import Interrupted, run_async
from provisioning.site import bus_of, load_site_config, port_for

EXAMPLE = """\
examples:
  meter-provision scan --bus rs485-1                 (unit ids 1..247)
  meter-provision scan --bus tcp-1 --units 1-20 --timeout 0.2

The time left it shows assumes every unit left is absent (the slowest common case), so
it is an upper bound from the first unit on. Exit 1 when nothing answered.
"""


@dataclass(frozen=True, slots=True)
class Responder:
    unit: int
    map_name: str
    detail: str


def parse_units(text: str) -> range:
    """``"1-247"`` or ``"5"``: a range of unit ids within 1..247."""
    try:
        first, dash, last = text.partition("-")
        low = int(first)
        high = int(last) if dash else low
    except ValueError:
        raise ProvisionError(f"--units {text!r}: write a unit id or a range like 1-247") from None
    if not 1 <= low <= high <= 247:
        raise ProvisionError(f"--units {text!r}: unit ids are 1..247, low to high")
    return range(low, high + 1)


#: Modbus TCP gateway exceptions: "path unavailable", "target failed to respond".
_NOBODY_THERE = frozenset({0x0A, 0x0B})


def _silent(exc: MeterIOError) -> bool:
    """No device at that unit: a timeout, or a TCP gateway saying nothing answered."""
    cause = exc.__cause__
    return exc.kind == IOFailure.TIMEOUT or (
        isinstance(cause, ExceptionReplyError) and cause.code in _NOBODY_THERE
    )


def _request(regmap: RegisterMap, name: str, unit: int) -> modbus.Request:
    p = regmap.point(name)
    count = p.end - p.address
    if p.table is Table.HOLDING:
        return modbus.read_holding(unit, p.address, count)
    return modbus.read_input(unit, p.address, count)


class _NobodyAnsweredError(Exception):
    """Nothing answered at this unit."""


#: Points read to fingerprint a third-party meter, and the plausible range of each unit.
_PROBES = ("voltage", "voltage_l2", "voltage_l3", "frequency", "energy_import")
_PLAUSIBLE = {"V": (50.0, 500.0), "Hz": (45.0, 65.0)}


async def _read_point(port: ModbusPort, regmap: RegisterMap, name: str, unit: int) -> Value:
    """One point; :class:`_NobodyAnsweredError` when nobody is there, MeterIOError when refused."""
    try:
        regs = await port.request(_request(regmap, name, unit))
    except MeterIOError as exc:
        if exc.kind == IOFailure.CONNECTION:
            raise ProvisionError(f"cannot reach the bus {port.name}: {exc.cause}") from None
        if _silent(exc):
            raise _NobodyAnsweredError from None
        raise
    try:
        return decode(regmap.point(name), regs)
    except DecodeError as exc:
        raise MeterIOError(unit, IOFailure.GARBLED, str(exc)) from None


async def _fingerprint(port: ModbusPort, regmap: RegisterMap, unit: int) -> list[str] | None:
    """Each probe point of ``regmap`` read and plausible (voltages 50..500 V, frequency
    45..65 Hz, energy finite and >= 0): what was seen; None if any is not."""
    seen: list[str] = []
    for name in _PROBES:
        if not regmap.has(name):
            continue
        point = regmap.point(name)
        value = await _read_point(port, regmap, name, unit)
        try:
            if name == "energy_import":
                seen.append(f"{energy_wh(point, value)} Wh")
                continue
            reading = float(physical(point, value))
        except (DecodeError, ValueError, ArithmeticError):
            return None
        low, high = _PLAUSIBLE.get(point.unit, (-math.inf, math.inf))
        if not (math.isfinite(reading) and low <= reading <= high):
            return None
        seen.append(f"{reading:.1f} {point.unit}")
    return seen


async def probe_unit(port: ModbusPort, unit: int, maps: Sequence[RegisterMap]) -> Responder | None:
    """What answers at ``unit``; None for silence. A map with a version register must
    return its version; any other map must give plausible readings at all its probe
    points, and the map that explains the most points is named."""
    answered = False
    fits: list[tuple[int, str, list[str]]] = []
    for regmap in maps:
        try:
            if regmap.has("map_version"):
                version = await _read_point(port, regmap, "map_version", unit)
                answered = True
                if version == regmap.version:
                    return Responder(unit, regmap.name, f"map_version {version}")
                continue
            seen = await _fingerprint(port, regmap, unit)
        except _NobodyAnsweredError:
            if not answered:
                return None  # silence: no other map will get an answer either
            continue
        except MeterIOError:
            answered = True
            continue
        answered = True
        if seen is not None:
            fits.append((len(seen), regmap.name, seen))
    if fits:
        best = max(n for n, _, _ in fits)
        names = [name for n, name, _ in fits if n == best]
        seen = next(s for n, _, s in fits if n == best)
        return Responder(unit, " or ".join(names), f"probable: {', '.join(seen)}")
    if answered:
        return Responder(unit, "unknown", "answers, but no shipped map fits")
    return None


def silent_unit_seconds(port: ModbusPort) -> float:
    """What a unit where nothing answers costs, by the line's arithmetic: the first
    probe's timeout and, on RS-485, the silence before it, its wire time and the guard
    time after it (as ``RtuPort.request`` spends them). An absent unit is the slowest
    common case, so a scan of the units left takes about this much each at most."""
    if isinstance(port, RtuPort):
        probe = modbus.read_input(1, 0, 1)
        chars = (1 + len(probe.pdu()) + 2) + 1 + probe.reply_pdu_length() + 2
        return port.silence + chars * port.char_time + port.timeout + port.guard
    if isinstance(port, TcpPort):
        return port.timeout
    return 0.0


@dataclass(slots=True)
class ScanTally:
    """A scan's work so far, kept when it is interrupted, and its time-left estimate:
    the units left times what an absent unit costs (the line's arithmetic until an absent
    unit was timed, then the time measured), never the fast answers of the first meters."""

    total: int
    silent_unit_s: float
    found: list[Responder] = field(default_factory=list)
    done: int = 0
    elapsed_s: float = 0.0
    silent_seen: int = 0
    silent_s: float = 0.0

    def record(self, hit: Responder | None, seconds: float) -> None:
        self.done += 1
        self.elapsed_s += seconds
        if hit is None:
            self.silent_seen += 1
            self.silent_s += seconds
        else:
            self.found.append(hit)

    def seconds_left(self) -> float:
        per_silent = self.silent_s / self.silent_seen if self.silent_seen else self.silent_unit_s
        per_unit = max(per_silent, self.elapsed_s / self.done if self.done else 0.0)
        return (self.total - self.done) * per_unit

    def progress_line(self) -> str:
        bar = "#" * (30 * self.done // self.total)
        return (
            f"\r[{bar:<30}] {self.done}/{self.total} units, {len(self.found)} found, "
            f"up to ~{self.seconds_left():.0f} s left "
        )


async def scan(
    port: ModbusPort,
    units: range,
    maps: Sequence[RegisterMap],
    tally: ScanTally,
    progress: Callable[[ScanTally], None],
) -> list[Responder]:
    """Probe ``units`` in order; ``tally`` holds what was found so far (an interrupted
    scan keeps it)."""
    progress(tally)
    for unit in units:
        began = time.monotonic()
        hit = await probe_unit(port, unit, maps)
        tally.record(hit, time.monotonic() - began)
        progress(tally)
    return tally.found


def add_scan_command(sub: Subcommands) -> None:
    p = sub.add_parser(
        "scan",
        help="probe a bus for meters and identify their maps",
        description="Probe unit ids on a bus from the config; a table of responders on stdout, "
        "progress on stderr. Ctrl-C stops it and prints the table of what it found so far.",
        epilog=EXAMPLE,
    )
    add_config_option(p)
    p.add_argument("--bus", required=True, help="bus name from the config")
    p.add_argument("--units", default="1-247", help="unit ids, e.g. 1-247 or 5-9")
    p.add_argument("--timeout", type=float, default=0.3, help="seconds per probe")
    p.add_argument(
        "--addresses",
        help="DL/T 645 bus: addresses to probe, e.g. 000000000001-000000000032 (without it, "
        "read address 13H asks the one meter on a point-to-point link)",
    )
    p.set_defaults(func=run_scan)


def _print_table(bus: str, found: list[Responder]) -> None:
    if not found:
        print(f"no meter answered on {bus}")
        return
    print(f"{'unit':>4}  {'map':<8}  detail")
    for r in found:
        print(f"{r.unit:>4}  {r.map_name:<8}  {r.detail}")


def run_scan(args: argparse.Namespace) -> int:
    if not 0 < args.timeout <= 30:
        raise ProvisionError(f"--timeout {args.timeout}: give 0 < seconds <= 30")
    config = load_site_config(args.config)
    bus = bus_of(config, args.bus)
    if isinstance(bus, RtuBus) and bus.protocol == "dlt645":
        return run_dlt645_scan(bus, args.addresses, args.timeout)
    if args.addresses:
        raise ProvisionError(f"--addresses: bus {bus.name} speaks Modbus (give --units)")
    units = parse_units(args.units)
    names = ["pe1"] + [n for n in shipped_map_names() if n != "pe1"]
    maps = [load_map(n) for n in names]
    started = time.monotonic()
    port = port_for(bus, timeout=args.timeout)
    tally = ScanTally(len(units), silent_unit_seconds(port))

    def progress(t: ScanTally) -> None:
        print(t.progress_line(), end="", file=sys.stderr, flush=True)

    async def run() -> list[Responder]:
        try:
            return await scan(port, units, maps, tally, progress)
        finally:
            await port.close()

    try:
        found = run_async(run)
    except Interrupted as exc:
        print(file=sys.stderr)  # end the progress line
        _print_table(bus.name, tally.found)
        exc.kept = f"{tally.done} of {len(units)} units scanned, the table shows what answered"
        raise
    print(f"\nscanned {len(units)} units in {time.monotonic() - started:.1f} s", file=sys.stderr)
    _print_table(bus.name, found)
    return 0 if found else 1
