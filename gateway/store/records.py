"""What goes into the store and what comes out: meters, cycle updates, outbox rows, and the
forms of times and token windows in the file."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple, Protocol

from pydantic import JsonValue

from gateway.core.commands import Command
from gateway.core.meter_state import MeterState


class WindowLike(Protocol):
    """The used-token window of ``protocol.tokens`` (``ReplayWindow``): plain ints."""

    @property
    def epoch(self) -> int: ...
    @property
    def highest(self) -> int: ...
    @property
    def bitmap(self) -> int: ...


@dataclass(frozen=True, slots=True)
class TokenWindow:
    epoch: int
    highest: int
    bitmap: int


@dataclass(frozen=True, slots=True)
class MeterRecord:
    """How to reach a meter and the key its tokens are bound to."""

    meter_id: str
    bus: str
    unit_id: int
    map_name: str
    meter_key: bytes
    key_epoch: int = 0
    #: for a meter without a relay of its own: "BUS:UNIT:COIL" of the relay that switches
    #: its supply (a relay module on a bus the gateway polls)
    relay_output: str | None = None
    #: a DL/T 645 meter's remote-control secret: "PASSWORD OPERATOR" (8 hex digits each),
    #: or "esam" for a meter whose commands only its utility's security module can make
    control_secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class StoredMeter:
    record: MeterRecord
    state: MeterState
    token_window: TokenWindow | None
    lockout: dict[str, JsonValue] | None
    #: keys of later epochs installed ahead of a key change, by epoch
    next_keys: dict[int, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MeterUpdate:
    """What one step decided for one meter, to be committed with the rest of its cycle."""

    state: MeterState
    commands: Sequence[Command]
    now: datetime
    token_window: WindowLike | None = None
    lockout: dict[str, JsonValue] | None = None
    #: a key change: the meter's key becomes the one installed for this epoch
    key_epoch: int | None = None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    meter_id: str
    seq: int
    kind: str
    ts: datetime
    body: dict[str, JsonValue] = field(hash=False)
    acked_at: datetime | None = None


class RawOutboxRow(NamedTuple):
    """One unacknowledged outbox row as stored: ``ts`` ISO 8601, ``body_json`` the body."""

    id: int
    meter_id: str
    seq: int
    kind: str
    ts: str
    body_json: str


INT64_MAX = (1 << 63) - 1


def to_signed64(value: int) -> int:
    """A 64-bit window bitmap as SQLite's signed 64-bit INTEGER holds it."""
    if not 0 <= value < 1 << 64:
        raise ValueError("token window bitmap must be a 64-bit unsigned int")
    return value - (1 << 64) if value >= 1 << 63 else value


def from_signed64(value: int) -> int:
    return value + (1 << 64) if value < 0 else value


def iso(at: datetime) -> str:
    """A time as the store writes it: ISO 8601 in UTC, so that SQL compares it as text
    (a command's ``expires`` may come with any offset)."""
    if at.tzinfo is None:
        raise ValueError("store times must carry a time zone")
    return at.astimezone(UTC).isoformat()
