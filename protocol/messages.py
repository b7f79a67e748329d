"""The messages the gateway publishes about a meter, each kind defined once, and their bytes.

A message is the envelope (``v``, ``gateway``, ``meter``, ``seq``, ``ts``) followed by
its body: ``kind`` first, then the kind's own fields, in the order written here. The core
builds bodies (typed dicts: plain dicts at run time, checked by mypy, so building one costs
no more than a dict), the store keeps them as JSON text and assigns ``seq`` and ``ts``,
and :func:`encode_message` puts one in its envelope for the broker. ``protocol/mqtt.py``
derives the JSON Schemas of ``docs/schemas/`` and the validating models from these
definitions. Pure standard library, so that the core can use it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Final, Literal, NotRequired, TypeAlias, TypedDict, Union, cast

from protocol.event_kinds import EventKind

SCHEMA_VERSION: Final = 1
#: What a gateway, meter or request id may look like (letters, digits, ``._-``).
ID_PATTERN: Final = r"^[A-Za-z0-9._-]{1,64}$"

# A JSON value (what ``json.loads`` can return); recursive, so written with Union.
JsonValue: TypeAlias = Union[  # noqa: UP007 - a recursive alias needs Union
    list["JsonValue"], dict[str, "JsonValue"], str, bool, int, float, None
]


class Spec:
    """What a field's JSON Schema says beyond its type: pydantic ``Field`` arguments
    (``description``, ``ge``, ``pattern``, ``default``...), kept as data here so that this
    module needs no pydantic."""

    __slots__ = ("field_args",)

    def __init__(self, **field_args: object) -> None:
        self.field_args = field_args


_ID = Spec(pattern=ID_PATTERN)


#: The relay as a ``balance`` reports it.
RelayWord: TypeAlias = Literal["closed", "open", "armed"]
#: What each relay word means, one line each (docs/mqtt.md renders them).
RELAY_MEANINGS: Final[dict[str, str]] = {
    "closed": "supplying",
    "open": "not supplying",
    "armed": "credit restored: waiting for the customer's button to close",
}


class Envelope(TypedDict):
    """What every meter message starts with."""

    v: Literal[1]
    gateway: Annotated[str, _ID]
    meter: Annotated[str, _ID]
    seq: Annotated[int, Spec(ge=1, description="per meter, gap-free, survives restarts")]
    ts: datetime


class Reading(TypedDict):
    """The body of a ``reading`` message."""

    kind: Literal["reading"]
    energy_import_wh: Annotated[int, Spec(ge=0)]
    power_w: Annotated[int | None, Spec(default=None)]
    voltage_v: Annotated[float | None, Spec(default=None)]
    relay_closed: Annotated[bool | None, Spec(default=None)]
    charged: Annotated[
        int, Spec(description="minor units charged for the energy since the last reading")
    ]
    # Added after version 1's fields (extended, never changed): what else the meter reports,
    # each present only when the meter's register map publishes the point it comes from
    # (MEASURED), rounded to the point's resolution.
    current_a: NotRequired[Annotated[float, Spec(default=None, description="phase 1 current")]]
    current_l2_a: NotRequired[Annotated[float, Spec(default=None)]]
    current_l3_a: NotRequired[Annotated[float, Spec(default=None)]]
    voltage_l2_v: NotRequired[Annotated[float, Spec(default=None)]]
    voltage_l3_v: NotRequired[Annotated[float, Spec(default=None)]]
    power_l1_w: NotRequired[Annotated[int, Spec(default=None)]]
    power_l2_w: NotRequired[Annotated[int, Spec(default=None)]]
    power_l3_w: NotRequired[Annotated[int, Spec(default=None)]]
    power_factor: NotRequired[Annotated[float, Spec(default=None, ge=-1, le=1)]]
    frequency_hz: NotRequired[Annotated[float, Spec(default=None)]]
    energy_export_wh: NotRequired[Annotated[int, Spec(default=None, ge=0)]]


#: The measured fields of a reading beyond version 1's: each field, the register-map point
#: it comes from (by its canonical name) and the unit the field is in. A map publishes a
#: point by default when a field here names it (``publish = false`` in the map keeps it out).
MEASURED: Final[dict[str, tuple[str, str]]] = {
    "current_a": ("current", "A"),
    "current_l2_a": ("current_l2", "A"),
    "current_l3_a": ("current_l3", "A"),
    "voltage_l2_v": ("voltage_l2", "V"),
    "voltage_l3_v": ("voltage_l3", "V"),
    "power_l1_w": ("active_power_l1", "W"),
    "power_l2_w": ("active_power_l2", "W"),
    "power_l3_w": ("active_power_l3", "W"),
    "power_factor": ("power_factor", ""),
    "frequency_hz": ("frequency", "Hz"),
    "energy_export_wh": ("energy_export", "Wh"),
}
#: The field each publishable point fills.
FIELD_OF_POINT: Final[dict[str, str]] = {point: name for name, (point, _) in MEASURED.items()}


class Balance(TypedDict):
    """The body of a ``balance`` message."""

    kind: Literal["balance"]
    balance: Annotated[
        int, Spec(description="minor units; below zero while emergency credit is used")
    ]
    currency: str
    credit_state: str
    debt: Annotated[int, Spec(default=0)]
    relay: RelayWord
    #: ISO 8601 with the offset of the gateway's clock
    forecast_exhaustion: Annotated[str | None, Spec(default=None)]


class Event(TypedDict):
    """The body of an ``event`` message."""

    kind: Literal["event"]
    event: Annotated[
        str, Spec(description="e.g. relay_opened, token_accepted, token_rejected, tamper")
    ]
    reason: str
    details: Annotated[dict[str, JsonValue], Spec(default_factory=dict)]


class ReadingMessage(Envelope, Reading):
    """A good reading of a meter's registers (``meters/{id}/reading``)."""


class BalanceMessage(Envelope, Balance):
    """The meter's credit after a change (``meters/{id}/balance``, retained)."""


class EventMessage(Envelope, Event):
    """Something happened, with its reason (``meters/{id}/event``)."""


Body = Reading | Balance | Event
MeterMessage = ReadingMessage | BalanceMessage | EventMessage
#: Every kind of meter message, by the name of its topic's last level.
MESSAGES: Final[dict[str, type[MeterMessage]]] = {
    "reading": ReadingMessage,
    "balance": BalanceMessage,
    "event": EventMessage,
}


def event_body(name: EventKind, reason: str, **details: JsonValue) -> Event:
    """The body of an ``event`` message."""
    return {"kind": "event", "event": name.value, "reason": reason, "details": details}


def as_json(body: Body) -> dict[str, JsonValue]:
    """A body as the plain JSON object it is at run time (what the store writes)."""
    return cast("dict[str, JsonValue]", body)


def utc_stamp(ts: datetime) -> str:
    """A time as messages carry it: UTC, ISO 8601, milliseconds, ``Z``."""
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_body(body: Mapping[str, object]) -> str:
    """A body's JSON text, compact (as the store keeps it)."""
    return json.dumps(body, separators=(",", ":"))


#: the envelope's keys: a body key of the same name never overrides them
_ENVELOPE_KEYS = frozenset(Envelope.__annotations__)
#: how such a key looks in a body's text (a false match only costs a rewrite)
_ENVELOPE_KEY_TEXTS = tuple(f'"{k}":' for k in _ENVELOPE_KEYS)
#: what a rewritten body leaves out: the envelope's keys and a kind of its own
_NOT_BODY_KEYS = _ENVELOPE_KEYS | {"kind"}


@lru_cache(maxsize=65_536)
def _json_string(text: str) -> str:
    return json.dumps(text)


def encode_message(kind: str, body: str, *, gateway: str, meter: str, seq: int, ts: str) -> bytes:
    """The bytes published for one meter message: the envelope, then the body.

    ``body`` is the body's JSON object as stored (compact, its ``kind`` first, as the core
    builds it), ``ts`` the time as :func:`utc_stamp` writes it. The message's ``kind`` is
    ``kind`` (the topic's); a body whose text starts with another kind, or names a key of
    the envelope, is rewritten first with ``kind`` first and without those keys (only
    bodies built by hand come here)."""
    head = '{"kind":' + _json_string(kind)
    if not (body.startswith(head) and body[len(head) : len(head) + 1] in (",", "}")) or any(
        key in body for key in _ENVELOPE_KEY_TEXTS
    ):
        fields = json.loads(body)
        body = encode_body(
            {"kind": kind, **{k: v for k, v in fields.items() if k not in _NOT_BODY_KEYS}}
        )
    return (
        f'{{"v":{SCHEMA_VERSION},"gateway":{_json_string(gateway)},'
        f'"meter":{_json_string(meter)},"seq":{seq},"ts":"{ts}",{body[1:]}'
    ).encode()
