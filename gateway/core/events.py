"""What the core reacts to. The shell turns polls, keypad entries, MQTT commands and the
clock into these; every event names its meter and carries its own time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Literal

from gateway.core.frozen import quick_init
from gateway.core.tariff import Tariff
from protocol.event_kinds import EventKind
from protocol.messages import JsonValue
from protocol.tokens.errors import TokenRefusal

Channel = Literal["keypad", "online"]


@quick_init
@dataclass(frozen=True, slots=True)
class ReadingReceived:
    """A good read of the meter's registers (a failed read is ``PollFailed``)."""

    meter_id: str
    energy_import_wh: int
    read_at: datetime
    power_w: int | None = None
    relay_closed: bool | None = None
    cover_open: bool = False
    magnetic_tamper: bool = False
    load_limit_tripped: bool = False
    reverse_energy: bool = False
    button_pressed: bool = False
    voltage_v: float | None = None
    #: the energy register's step in Wh (an EM24 counts in 100 Wh): a step of the
    #: register is plausible up to the rated power's energy plus one such step
    resolution_wh: int = 1
    #: the relay module switching this meter did not answer when its coil was read with
    #: this reading (the contactor's position is unknown: a relay fault)
    relay_unreadable: bool = False
    #: what else the meter reports, by reading field (``protocol.messages.MEASURED``),
    #: already in the field's unit and rounded: the reading message carries it as it is
    measured: tuple[tuple[str, int | float], ...] = ()


@dataclass(frozen=True, slots=True)
class PollFailed:
    """A poll got no usable answer: never a reason to charge or to disconnect."""

    meter_id: str
    reason: str
    at: datetime
    #: how it failed (``timeout``, ``garbled``, ``invalid_value``...: the shell's kinds)
    kind: str = ""


@dataclass(frozen=True, slots=True)
class TopUpAccepted:
    """A token that ``protocol.tokens`` verified (MAC or signature, counter window)."""

    meter_id: str
    amount: int
    counter: int
    token_id: str
    channel: Channel
    at: datetime


@dataclass(frozen=True, slots=True)
class ManagementTokenAccepted:
    """A verified management token (``protocol.tokens``: set maximum power, clear tamper,
    set emergency credit, key change, test). ``token_class`` is its CLI name
    (``set-max-power``...), ``value`` its typed value (W, tamper mask, minor units, new
    key epoch, test code); ``epoch`` the key epoch it was verified in."""

    meter_id: str
    token_class: str
    value: int
    counter: int
    token_id: str
    channel: Channel
    at: datetime
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class LoadLimitObserved:
    """The load limit read back from the meter after a set-maximum-power token wrote it
    (``observed_w`` None: the write or the read failed, with ``error``)."""

    meter_id: str
    requested_w: int
    observed_w: int | None
    at: datetime
    error: str = ""


@dataclass(frozen=True, slots=True)
class TokenRejected:
    """A token refused before the core saw its money; the core only reports it."""

    meter_id: str
    reason: TokenRefusal
    channel: Channel
    at: datetime
    token_id: str | None = None
    #: what the refusal adds to explain it (e.g. "retry after ..." while locked out)
    detail: str = ""
    #: repeated bad keypad entries: the headend should look at this meter
    lockout_alarm: bool = False


@dataclass(frozen=True, slots=True)
class ButtonPressed:
    """The customer pressed (held) the meter's reconnect button."""

    meter_id: str
    at: datetime


@dataclass(frozen=True, slots=True)
class ClockTick:
    """Time passed: a no-disconnect window started or ended, a day ended (standing charge),
    a scheduled tariff took effect. The shell sends one at ``next_deadline`` at least."""

    meter_id: str
    at: datetime


class RemoteKind(StrEnum):
    DISCONNECT = "disconnect"
    RECONNECT = "reconnect"
    PROTECT_ON = "protect_on"
    PROTECT_OFF = "protect_off"


@dataclass(frozen=True, slots=True)
class RemoteCommand:
    """A signed headend command that switches supply or protection."""

    meter_id: str
    kind: RemoteKind
    reason: str
    at: datetime
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class RelayObserved:
    """The relay position read back from the meter."""

    meter_id: str
    closed: bool
    at: datetime


@dataclass(frozen=True, slots=True)
class CommunicationLost:
    meter_id: str
    at: datetime
    reason: str = ""
    #: the meter opens its relay by itself when its credit lease runs out
    self_trips: bool = False


@dataclass(frozen=True, slots=True)
class CommunicationRestored:
    meter_id: str
    at: datetime


@dataclass(frozen=True, slots=True)
class TariffChanged:
    """A new tariff, in effect from ``activates_at`` (``None``: at once)."""

    meter_id: str
    tariff: Tariff
    at: datetime
    activates_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class MeterNotice:
    """Something the shell found out about a meter that the headend should hear (a DL/T
    645 meter's clock off by minutes, a meter this gateway cannot switch): published as
    the event ``name``; nothing else about the meter changes."""

    meter_id: str
    at: datetime
    name: EventKind
    reason: str
    details: tuple[tuple[str, JsonValue], ...] = ()


Event = (
    ReadingReceived
    | PollFailed
    | TopUpAccepted
    | ManagementTokenAccepted
    | LoadLimitObserved
    | TokenRejected
    | ButtonPressed
    | ClockTick
    | RemoteCommand
    | RelayObserved
    | CommunicationLost
    | CommunicationRestored
    | TariffChanged
    | MeterNotice
)
