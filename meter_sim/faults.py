"""Fault injection: what goes wrong with which meter, how often, decided by a seeded RNG.

A fault is (unit or every meter, kind, probability per request, options). For each
request the :class:`FaultTable` rolls every fault that applies, in a fixed order, with
a per-meter ``random.Random`` seeded from the simulator's seed: the same seed and the
same requests give the same faults. The decision is an :class:`Outcome` the transports
act on. Fault plans are JSON or TOML files validated with pydantic.
"""

from __future__ import annotations

import json
import random
import tomllib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from meter_sim.errors import ControlError, FaultPlanError

ALL = "all"


class FaultKind(StrEnum):
    TIMEOUT = "timeout"  # no reply at all
    BAD_CRC = "bad_crc"  # RTU reply with a wrong CRC (on TCP: acts like garbled)
    EXCEPTION = "exception"  # Modbus exception reply, code 0x06 (busy) unless `code` says
    SLOW = "slow"  # reply after `delay` seconds (wall time)
    TRUNCATED = "truncated"  # only the first half of the reply frame
    GARBLED = "garbled"  # reply bytes flipped (RTU: CRC left as it was)
    RESET = "reset"  # TCP connection reset (RST) instead of a reply
    VANISH = "vanish"  # gone for `duration` simulated seconds, then back for at least as long
    RELAY_STUCK = "relay_stuck"  # a relay command is acknowledged but not carried out
    ENERGY_RESET = "energy_reset"  # energy counters restart from 0 (meter replaced); once


class Corruption(StrEnum):
    BAD_CRC = "bad_crc"
    TRUNCATED = "truncated"
    GARBLED = "garbled"


class FaultSpec(BaseModel):
    """One fault, as written in a plan file or sent on the control port."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    unit: int | Literal["all"] = Field(description="meter number, or 'all' for every meter")
    kind: FaultKind
    probability: float = Field(default=1.0, ge=0.0, le=1.0)
    code: int = Field(default=6, ge=1, le=255, description="exception code for 'exception'")
    delay: float = Field(default=1.0, ge=0.0, le=60.0, description="seconds for 'slow'")
    duration: float = Field(default=60.0, gt=0.0, description="simulated seconds for 'vanish'")


class FaultPlan(BaseModel):
    """A fault plan file: ``faults = [...]`` (JSON object or TOML ``[[faults]]`` tables)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    faults: list[FaultSpec] = Field(default_factory=list)


def load_fault_plan(path: Path) -> FaultPlan:
    """Read a ``.json`` or ``.toml`` fault plan; :class:`FaultPlanError` says what is wrong."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FaultPlanError(source, f"cannot read: {exc}") from None
    return parse_fault_plan(text, source, toml=path.suffix.lower() == ".toml")


def parse_fault_plan(text: str, source: str, *, toml: bool) -> FaultPlan:
    try:
        data = tomllib.loads(text) if toml else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise FaultPlanError(source, f"not valid {'TOML' if toml else 'JSON'}: {exc}") from None
    try:
        return FaultPlan.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise FaultPlanError(source, f"{where}: {err['msg']}") from None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happens to one request."""

    silent: bool = False  # no reply
    vanished: bool = False  # the meter is gone (TCP answers 0x0B, RTU stays silent)
    reset: bool = False
    exception: int | None = None
    delay: float = 0.0
    corruption: Corruption | None = None
    relay_actuates: bool = True
    energy_reset: bool = False


NORMAL = Outcome()

#: The order faults are rolled in (fixed, so a seed replays the same faults).
_ROLL_ORDER = (
    FaultKind.ENERGY_RESET,
    FaultKind.VANISH,
    FaultKind.RESET,
    FaultKind.TIMEOUT,
    FaultKind.EXCEPTION,
    FaultKind.RELAY_STUCK,
    FaultKind.SLOW,
    FaultKind.BAD_CRC,
    FaultKind.TRUNCATED,
    FaultKind.GARBLED,
)


class FaultTable:
    """The faults in force, and the per-meter RNGs that decide them."""

    def __init__(self, seed: int, units: range) -> None:
        self._seed = seed
        self._units = units
        self._specs: dict[int | str, dict[FaultKind, FaultSpec]] = {}
        self._rngs: dict[int, random.Random] = {}
        self._vanished_until: dict[int, float] = {}

    def __bool__(self) -> bool:
        return bool(self._specs) or bool(self._vanished_until)

    def set(self, spec: FaultSpec) -> None:
        """Put a fault in force (probability 0 clears it)."""
        if spec.unit != ALL and spec.unit not in self._units:
            raise ControlError(f"no meter {spec.unit}")
        key: int | str = spec.unit
        if spec.probability == 0.0:
            self.clear(spec.unit, spec.kind)
            return
        self._specs.setdefault(key, {})[spec.kind] = spec

    def clear(self, unit: int | str, kind: FaultKind | None = None) -> None:
        """Clear one kind, or every fault of ``unit`` (a vanished meter comes back)."""
        specs = self._specs.get(unit, {})
        if kind is None:
            specs.clear()
        else:
            specs.pop(kind, None)
        if kind in (None, FaultKind.VANISH):
            if unit == ALL:
                self._vanished_until.clear()
            elif isinstance(unit, int):
                self._vanished_until.pop(unit, None)
        if not specs:
            self._specs.pop(unit, None)

    def in_force(self) -> list[FaultSpec]:
        return [spec for specs in self._specs.values() for spec in specs.values()]

    def _rng(self, unit: int) -> random.Random:
        rng = self._rngs.get(unit)
        if rng is None:
            rng = self._rngs[unit] = random.Random(f"faults:{self._seed}:{unit}")
        return rng

    def decide(self, unit: int, now: float, *, is_write: bool) -> Outcome:
        """Roll the faults that apply to one request to ``unit`` at simulated time ``now``."""
        if not self:
            return NORMAL
        until = self._vanished_until.get(unit)
        if until is not None and now < until:
            return Outcome(silent=True, vanished=True)
        mine = self._specs.get(unit, {})
        every = self._specs.get(ALL, {})
        if not mine and not every:
            return NORMAL
        rng = self._rng(unit)
        fired: dict[FaultKind, FaultSpec] = {}
        for kind in _ROLL_ORDER:
            spec = mine.get(kind) or every.get(kind)
            if spec is None:
                continue
            if kind is FaultKind.VANISH and until is not None and now < until + spec.duration:
                continue  # back for at least as long as it was gone
            if rng.random() < spec.probability:
                fired[kind] = spec
        if FaultKind.ENERGY_RESET in fired:
            self.clear(fired[FaultKind.ENERGY_RESET].unit, FaultKind.ENERGY_RESET)
        energy_reset = FaultKind.ENERGY_RESET in fired
        if FaultKind.VANISH in fired:
            self._vanished_until[unit] = now + fired[FaultKind.VANISH].duration
            return Outcome(silent=True, vanished=True, energy_reset=energy_reset)
        if FaultKind.RESET in fired:
            return Outcome(reset=True, energy_reset=energy_reset)
        if FaultKind.TIMEOUT in fired:
            return Outcome(silent=True, energy_reset=energy_reset)
        exception = fired[FaultKind.EXCEPTION].code if FaultKind.EXCEPTION in fired else None
        corruption = next(
            (Corruption(k.value) for k in _ROLL_ORDER[-3:] if k in fired),
            None,
        )
        return Outcome(
            exception=exception,
            delay=fired[FaultKind.SLOW].delay if FaultKind.SLOW in fired else 0.0,
            corruption=corruption,
            relay_actuates=not (is_write and FaultKind.RELAY_STUCK in fired),
            energy_reset=energy_reset,
        )


def corrupt(frame: bytes, corruption: Corruption, header: int, rng: random.Random) -> bytes:
    """Damage a reply frame; the first ``header`` bytes (MBAP) stay intact on TCP."""
    match corruption:
        case Corruption.TRUNCATED:
            return frame[: max(header + 1, len(frame) // 2)]
        case Corruption.BAD_CRC:
            if header:  # TCP has no CRC: damage the data instead
                return corrupt(frame, Corruption.GARBLED, header, rng)
            return frame[:-2] + bytes((frame[-2] ^ 0xFF, frame[-1] ^ 0x5A))
        case Corruption.GARBLED:
            out = bytearray(frame)
            body = range(header, len(out) - (0 if header else 2))
            for i in rng.sample(body, k=max(1, len(body) // 3)):
                out[i] ^= rng.randrange(1, 256)
            return bytes(out)
