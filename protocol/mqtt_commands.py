"""The headend's commands to a gateway and the gateway's results: models, meanings and the
bytes a headend signs.

Commands arrive on ``{root}/cmd`` or ``{root}/meters/{meter}/cmd`` (see
:class:`protocol.mqtt.Topics`); each is one of :data:`Command`'s members, told apart by
``cmd``. Their JSON Schemas are exported with the other payloads' from
:data:`protocol.mqtt.SCHEMAS`; every name here is importable from ``protocol.mqtt`` too.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, cast, get_args

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter

from protocol.messages import SCHEMA_VERSION
from protocol.payload_fields import Identifier, UtcTime


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = SCHEMA_VERSION
    id: Identifier = Field(description="request id, echoed in the result")
    correlation: str | None = Field(
        default=None,
        max_length=128,
        description="MQTT 3.1.1 fallback: echoed in the result on cmd/result",
    )


class TopUpCommand(_Command):
    """An online top-up: the vending service's Ed25519-signed token is its own proof."""

    cmd: Literal["topup"]
    token: str = Field(min_length=1, max_length=1024)
    meter: Identifier | None = Field(
        default=None, description="required on the gateway's cmd topic; else the topic's"
    )


class SignedCommand(_Command):
    """A command that moves money or switches supply: signed by the headend's key.

    ``sig`` is base64url Ed25519 over :func:`signing_bytes` of the command without ``sig``.
    ``gateway`` names the one gateway it is for, inside the signed bytes, so a captured
    command cannot be played to another gateway (a replacement box among them).
    """

    gateway: Identifier = Field(description="the gateway the command is for")
    key_id: Identifier
    expires: UtcTime
    sig: str = Field(min_length=1, max_length=200)


class RelayCommand(SignedCommand):
    cmd: Literal["disconnect", "reconnect", "protect_on", "protect_off"]
    meter: Identifier
    reason: str = Field(default="remote", max_length=200)


class TariffCommand(SignedCommand):
    cmd: Literal["tariff_update"]
    meter: Identifier
    tariff: dict[str, JsonValue]
    activates_at: UtcTime | None = Field(default=None, description="null: at once")


class RereadCommand(_Command):
    cmd: Literal["reread"]
    meter: Identifier


class ResendCommand(_Command):
    """Resend a meter's messages from ``from_seq`` after the headend saw a gap."""

    cmd: Literal["resend"]
    meter: Identifier
    from_seq: int = Field(ge=1)


Command = Annotated[
    TopUpCommand | RelayCommand | TariffCommand | RereadCommand | ResendCommand,
    Field(discriminator="cmd"),
]
COMMAND = TypeAdapter(Command)
#: The members of :data:`Command`, in the order docs/mqtt.md lists them.
COMMAND_MODELS: tuple[type[_Command], ...] = (
    TopUpCommand,
    RelayCommand,
    TariffCommand,
    RereadCommand,
    ResendCommand,
)
#: What each ``cmd`` does, one line each (docs/mqtt.md renders them).
COMMAND_MEANINGS: dict[str, str] = {
    "topup": "credits the meter once, whichever channel delivers the purchase first "
    "(the vending service's signed online token is its own proof); a management token (key "
    "change, maximum power, clear tamper, emergency credit, test) is carried out as its "
    "keypad twin would be",
    "disconnect": "opens the meter's relay (remote disconnection)",
    "reconnect": "lifts a remote disconnection (the meter's own rules still apply: no "
    "credit, no supply)",
    "protect_on": "protected supply: the meter is never disconnected while on",
    "protect_off": "ends protected supply",
    "tariff_update": "replaces the meter's tariff, at once or at `activates_at`",
    "reread": "polls the meter now",
    "resend": "publishes the meter's stored messages from `from_seq` again, in the background",
}


def command_names(model: type[_Command]) -> tuple[str, ...]:
    """The ``cmd`` values a command model takes."""
    return cast("tuple[str, ...]", get_args(model.model_fields["cmd"].annotation))


#: Every ``cmd`` a signed model takes: a command of these without ``sig`` is ``unsigned``.
SIGNED_COMMANDS = frozenset(
    name
    for model in COMMAND_MODELS
    if issubclass(model, SignedCommand)
    for name in command_names(model)
)


class CommandResult(BaseModel):
    """The answer to one command, on the request's response topic (or cmd/result)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = SCHEMA_VERSION
    gateway: Identifier
    id: str | None = Field(description="the command's id, null when it could not be read")
    ok: bool
    error: str | None = Field(default=None, description="machine-readable reason when not ok")
    message: str = ""
    correlation: str | None = None
    details: dict[str, JsonValue] = Field(default_factory=dict)
    ts: UtcTime


def signing_bytes(command: dict[str, Any]) -> bytes:
    """Canonical bytes a headend signs: the command's JSON without ``sig``, keys sorted,
    no whitespace, UTF-8."""
    body = {k: v for k, v in command.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
