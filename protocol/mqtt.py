"""The MQTT contract with the headend: the topic tree and every payload's model.

Topic root ``prepaid/v1/{gateway_id}/``. The meter messages (reading, balance, event) are
defined in ``protocol.messages``; their validating models here are derived from those
definitions. Status is the pydantic model below; commands and command results live in
``protocol.mqtt_commands`` and are importable from here too. The JSON Schemas in
``docs/schemas/`` are exported from these models (``python scripts/export_schemas.py``),
so the docs and the code cannot drift.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import (
    Annotated,
    Any,
    Literal,
    NotRequired,
    Union,
    cast,
    get_args,
    get_origin,
    get_type_hints,
)

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    TypeAdapter,
    create_model,
)

from protocol import messages
from protocol.messages import ID_PATTERN, SCHEMA_VERSION
from protocol.mqtt_commands import (
    COMMAND,
    COMMAND_MEANINGS,
    COMMAND_MODELS,
    SIGNED_COMMANDS,
    Command,
    CommandResult,
    RelayCommand,
    RereadCommand,
    ResendCommand,
    SignedCommand,
    TariffCommand,
    TopUpCommand,
    command_names,
    signing_bytes,
)
from protocol.payload_fields import Identifier, UtcTime

#: With the commands (protocol.mqtt_commands) and field types (protocol.payload_fields):
#: this module is where every payload is imported from.
__all__ = [
    "COMMAND",
    "COMMAND_MEANINGS",
    "COMMAND_MODELS",
    "DEFAULT_RESPONSE_TOPICS",
    "MAX_COMMAND_BYTES",
    "MAX_TOPIC_BYTES",
    "MESSAGE_MODELS",
    "METER_MESSAGE",
    "SCHEMAS",
    "SIGNED_COMMANDS",
    "TOPIC_ROOT",
    "Command",
    "CommandResult",
    "HealthSummary",
    "Identifier",
    "RelayCommand",
    "RereadCommand",
    "ResendCommand",
    "SignedCommand",
    "StatusMessage",
    "TariffCommand",
    "TopUpCommand",
    "Topics",
    "UtcTime",
    "command_names",
    "decode_message",
    "dump",
    "json_schemas",
    "signing_bytes",
    "topic_filter_problem",
    "topic_matches",
    "topic_name_problem",
]

TOPIC_ROOT = "prepaid/v1"
#: Largest command payload the gateway parses; anything bigger is refused unread.
MAX_COMMAND_BYTES = 16 * 1024
#: Longest topic name MQTT allows (its UTF-8 length is a 16-bit field).
MAX_TOPIC_BYTES = 65535
#: Where command results may go besides ``{root}/cmd/result``: the MQTT 5 response topics
#: a gateway answers on unless its config names others (``mqtt.response_topics``), and
#: what packaging/mosquitto-acl.template lets a gateway write.
DEFAULT_RESPONSE_TOPICS = ("headend/+/replies",)
_ID = re.compile(ID_PATTERN)


class Topics:
    """The topic tree of one gateway."""

    def __init__(self, gateway_id: str) -> None:
        if not _ID.match(gateway_id):
            raise ValueError(f"gateway id {gateway_id!r} must match {_ID.pattern}")
        self.gateway_id = gateway_id
        self.root = f"{TOPIC_ROOT}/{gateway_id}"

    @property
    def status(self) -> str:
        """Retained: birth (online + health) on connect, Last Will ``offline``."""
        return f"{self.root}/status"

    def meter(self, meter_id: str, kind: str) -> str:
        """``reading``, ``balance`` (retained latest) or ``event`` of one meter."""
        return f"{self.root}/meters/{meter_id}/{kind}"

    def meter_command(self, meter_id: str) -> str:
        """Where a headend sends one meter's commands (``+``: every meter's)."""
        return f"{self.root}/meters/{meter_id}/cmd"

    @property
    def gateway_command(self) -> str:
        return f"{self.root}/cmd"

    @property
    def command_subscriptions(self) -> tuple[str, str]:
        return self.gateway_command, self.meter_command("+")

    @property
    def fallback_result(self) -> str:
        """Where results go for MQTT 3.1.1 clients (no response topic property)."""
        return f"{self.root}/cmd/result"

    def meter_of_command_topic(self, topic: str) -> str | None:
        """The meter a command topic names, ``None`` for the gateway-wide topic.

        Raises ValueError for a topic that is not one of ours.
        """
        if topic == self.gateway_command:
            return None
        prefix = f"{self.root}/meters/"
        if topic.startswith(prefix) and topic.endswith("/cmd"):
            meter = topic[len(prefix) : -len("/cmd")]
            if _ID.match(meter):
                return meter
        raise ValueError(f"not a command topic of {self.gateway_id}: {topic!r}")


def topic_name_problem(topic: str) -> str | None:
    """Why ``topic`` cannot be published to (MQTT 5 section 4.7), or None when it can.

    A wildcard in a topic name makes paho raise and a broker disconnect; ``$`` topics
    belong to the broker."""
    if not topic:
        return "empty"
    if "+" in topic or "#" in topic:
        return "holds a wildcard (+ or #)"
    if "\x00" in topic:
        return "holds a NUL character"
    if topic.startswith("$"):
        return "starts with $ (the broker's own topics)"
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if size > MAX_TOPIC_BYTES:
        return f"is longer than {MAX_TOPIC_BYTES} bytes"
    return None


def topic_filter_problem(topic_filter: str) -> str | None:
    """Why ``topic_filter`` is not a valid subscription filter, or None."""
    if not topic_filter or "\x00" in topic_filter:
        return "empty or holds a NUL character"
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "# must be a whole last level"
        if "+" in level and level != "+":
            return "+ must be a whole level"
    return None


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether the topic name ``topic`` matches the subscription filter ``topic_filter``."""
    wanted, levels = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(wanted):
        if level == "#":
            return True
        if i >= len(levels) or (level != "+" and level != levels[i]):
            return False
    return len(wanted) == len(levels)


# ---------------------------------------------------------------- gateway -> headend


def _pydantic_form(hint: object) -> object:
    """pydantic's form of a type ``protocol.messages`` writes in plain Python: a time is
    sent as :func:`utc_stamp` writes it, and an object inside a message is JSON."""
    if hint is datetime:
        return UtcTime
    if get_origin(hint) is dict:
        return dict[str, JsonValue]
    return hint


def _message_model(message: type[messages.MeterMessage]) -> type[BaseModel]:
    """The validating model of a meter message defined in ``protocol.messages``: its
    fields in order, each with its ``Spec``; a one-value ``Literal`` is its own default."""
    fields: dict[str, Any] = {}
    for name, declared in get_type_hints(message, include_extras=True).items():
        # a field that may be left out is declared NotRequired[...]: what is inside counts
        annotation = get_args(declared)[0] if get_origin(declared) is NotRequired else declared
        hint: Any = annotation
        field_args: dict[str, Any] = {}
        if get_origin(annotation) is Annotated:
            hint, *extras = get_args(annotation)
            for extra in extras:
                if isinstance(extra, messages.Spec):
                    field_args.update(extra.field_args)
        if get_origin(hint) is Literal and len(get_args(hint)) == 1:
            field_args.setdefault("default", get_args(hint)[0])
        fields[name] = (_pydantic_form(hint), Field(**field_args))
    model: type[BaseModel] = create_model(
        message.__name__,
        __config__=ConfigDict(extra="forbid", frozen=True),
        __doc__=message.__doc__,
        __module__=__name__,
        **fields,
    )
    return model


#: The validating model of each kind of meter message, by kind.
MESSAGE_MODELS = {kind: _message_model(message) for kind, message in messages.MESSAGES.items()}
#: The fields each kind may leave out (a decoded message has them only when sent).
_OPTIONAL_KEYS = {
    kind: frozenset(
        name
        for name, hint in get_type_hints(message, include_extras=True).items()
        if get_origin(hint) is NotRequired
    )
    for kind, message in messages.MESSAGES.items()
}
_ANY_MESSAGE: Any = Annotated[
    Union[tuple(MESSAGE_MODELS.values())],  # noqa: UP007 - built at run time
    Field(discriminator="kind"),
]
METER_MESSAGE: TypeAdapter[Any] = TypeAdapter(_ANY_MESSAGE)


def decode_message(payload: bytes | str) -> messages.MeterMessage:
    """A published meter message, validated against its schema (``ValidationError`` if it
    breaks it); ``ts`` as an aware ``datetime``."""
    model = METER_MESSAGE.validate_json(payload)
    optional = _OPTIONAL_KEYS[model.kind]
    fields = model.model_fields_set
    return cast(
        "messages.MeterMessage",
        {k: v for k, v in model if k not in optional or k in fields},
    )


class HealthSummary(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    buses: dict[str, str] = Field(default_factory=dict, description="bus name -> ok/degraded/down")
    bus_faults: dict[str, str] = Field(
        default_factory=dict,
        description="bus name -> why it cannot be opened or connected (the OS's reason), "
        "for each bus that cannot",
    )
    meters_total: int = 0
    meters_online: int = 0
    outbox_depth: int = 0
    last_sync: UtcTime | None = None
    storage: str = Field(
        default="ok",
        description="ok, or why the store cannot commit (the gateway then enforces the last "
        "committed state and refuses top-ups with storage_unavailable)",
    )
    meters_quarantined: int = Field(
        default=0, description="meters no longer polled: their events kept failing (see events)"
    )
    relay_mismatches: int = Field(
        default=0, description="meters whose relay disagrees with the command now"
    )
    relay_retries: int = Field(
        default=0, description="relay commands repeated because a relay disagreed, since start"
    )
    internal_errors: int = Field(
        default=0, description="events and commands that failed unexpectedly, since start"
    )


class StatusMessage(BaseModel):
    """Retained gateway status: birth message, health updates and the Last Will."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = SCHEMA_VERSION
    gateway: Identifier
    state: Literal["online", "offline"]
    ts: UtcTime | None = None
    health: HealthSummary | None = None


def dump(model: BaseModel) -> bytes:
    """Serialise a payload the way the gateway publishes it."""
    return model.model_dump_json(exclude_none=False).encode()


SCHEMAS: dict[str, Any] = {
    **MESSAGE_MODELS,
    "status": StatusMessage,
    "command": COMMAND,
    "command-result": CommandResult,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """Every payload's JSON Schema by name."""
    out: dict[str, dict[str, Any]] = {}
    for name, model in SCHEMAS.items():
        if isinstance(model, TypeAdapter):
            schema = model.json_schema(mode="validation")
        else:
            schema = model.model_json_schema(mode="serialization")
        schema["$id"] = f"https://prepaid-edge.invalid/schemas/{name}.json"
        schema.setdefault("title", name)
        out[name] = schema
    return out
