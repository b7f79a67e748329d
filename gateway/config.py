"""The gateway's configuration: one TOML file validated by pydantic.

Secrets can come from the environment instead of the file: any key can be set as
``PREPAID_EDGE__SECTION__KEY`` (double underscores between levels, e.g.
``PREPAID_EDGE__MQTT__PASSWORD``). An error names the file, the key and the problem,
and the process exits before touching anything.
"""

from __future__ import annotations

import base64
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AwareDatetime,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.config_buses import (
    DLT645_MEASURED,
    DLT645_MEASURED_EVERY,
    ID_PATTERN,
    Bus,
    Dlt645Settings,
    RtuBus,
    Strict,
    TcpBus,
)
from gateway.errors import GatewayError
from protocol.mqtt import DEFAULT_RESPONSE_TOPICS, topic_filter_problem

ENV_PREFIX = "PREPAID_EDGE__"

__all__ = [  # the bus tables live in gateway.config_buses; imported from here as before
    "DLT645_MEASURED",
    "DLT645_MEASURED_EVERY",
    "ENV_PREFIX",
    "Broker",
    "Bus",
    "ConfigError",
    "Dlt645Settings",
    "GatewayConfig",
    "HomeAssistantSettings",
    "MqttSettings",
    "PollingSettings",
    "RtuBus",
    "SimulationSettings",
    "TcpBus",
    "TokenSettings",
    "load_config",
    "parse_config",
    "to_toml",
]


class ConfigError(GatewayError):
    """The configuration is wrong: which file, which key, what problem."""

    def __init__(self, path: str, key: str | None, problem: str) -> None:
        self.path = path
        self.key = key
        self.problem = problem
        where = f"{path}: {key}" if key else path
        super().__init__(f"{where}: {problem}")


class Broker(Strict):
    host: str = Field(description="broker address")
    port: int = Field(default=8883, gt=0, lt=65536, description="broker port")
    tls: bool = Field(default=True, description="TLS with the ca/cert/key files below")


class MqttSettings(Strict):
    brokers: list[Broker] = Field(
        min_length=1, description="tried in turn: the gateway fails over between them"
    )
    protocol: Literal["5", "3.1.1"] = Field(default="5", description="MQTT version")
    client_id: str | None = Field(default=None, description="default: the gateway id")
    username: str | None = Field(default=None, description="if the broker wants one")
    password: str | None = Field(default=None, description="better from the environment")
    ca_file: Path | None = Field(default=None, description="CA that signed the broker")
    cert_file: Path | None = Field(default=None, description="the gateway's certificate")
    key_file: Path | None = Field(
        default=None, description="the gateway's private key (must be owner-only)"
    )
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive")
    max_inflight: int = Field(
        default=256,
        ge=1,
        le=1000,
        description="QoS 1 messages awaiting acknowledgement (at most the broker's Receive Maximum)",
    )
    retention_s: int = Field(
        default=7 * 24 * 3600, ge=0, description="how long acknowledged messages stay for resend"
    )
    reconnect_min_s: float = Field(default=0.5, gt=0, description="first reconnect delay")
    reconnect_max_s: float = Field(
        default=60.0, gt=0, description="longest reconnect delay (jittered, doubling)"
    )
    session_expiry_s: int = Field(
        default=86_400,
        ge=0,
        le=0xFFFFFFFF,
        description="how long the broker keeps the gateway's session (and queues its "
        "commands) while it is away; 0: a clean session at every connect",
    )
    response_topics: list[str] = Field(
        default=list(DEFAULT_RESPONSE_TOPICS),
        description="MQTT 5 response topics (filters) command results may go to; any "
        "other is refused and answered on cmd/result",
    )

    @field_validator("response_topics")
    @classmethod
    def _filters(cls, v: list[str]) -> list[str]:
        for topic_filter in v:
            problem = topic_filter_problem(topic_filter)
            if problem is not None:
                raise ValueError(f"{topic_filter!r}: {problem}")
        return v


class PollingSettings(Strict):
    interval_s: float = Field(
        default=60.0, gt=0, description="normal poll interval, in real seconds (see clock_speed)"
    )
    min_interval_s: float = Field(
        default=5.0, gt=0, description="for meters near exhaustion, in real seconds"
    )
    max_interval_s: float = Field(
        default=900.0, gt=0, description="for meters with weeks of credit, in real seconds"
    )
    backoff_max_s: float = Field(
        default=300.0, gt=0, description="longest wait for a dead meter, in real seconds"
    )
    cutoff_interval_s: float | None = Field(
        default=None,
        gt=0,
        description="for meters already cut off, in real seconds (default: interval_s): a "
        "reading now and then, and one at once after a top-up or a command for the meter",
    )

    @property
    def cut_off_s(self) -> float:
        """The interval of a meter already cut off."""
        return self.interval_s if self.cutoff_interval_s is None else self.cutoff_interval_s

    @model_validator(mode="after")
    def _ordered(self) -> PollingSettings:
        if not self.min_interval_s <= self.interval_s <= self.max_interval_s:
            raise ValueError("needs min_interval_s <= interval_s <= max_interval_s")
        return self


def _b64_key(value: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except ValueError:
        raise ValueError("not base64url") from None
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return value


class TokenSettings(Strict):
    currency: str = Field(
        default="USD", pattern=r"^[A-Z]{3}$", description="ISO 4217 code of online tokens"
    )
    online_public_keys: dict[str, str] = Field(
        default_factory=dict,
        description="key id -> base64url Ed25519 public key of the vending service",
    )
    headend_public_keys: dict[str, str] = Field(
        default_factory=dict, description="key id -> base64url Ed25519 public key signing commands"
    )

    @field_validator("online_public_keys", "headend_public_keys")
    @classmethod
    def _keys(cls, v: dict[str, str]) -> dict[str, str]:
        for key_id, key in v.items():
            try:
                _b64_key(key)
            except ValueError as exc:
                raise ValueError(f"key {key_id!r}: {exc}") from None
        return v


class HomeAssistantSettings(Strict):
    """Publish Home Assistant MQTT discovery configs for every meter (retained)."""

    enabled: bool = Field(default=False, description="publish discovery configs on connect")
    prefix: str = Field(default="homeassistant", description="Home Assistant's discovery prefix")


class SimulationSettings(Strict):
    """For demos and tests against a simulator only: never set on a real site."""

    clock_speed: float = Field(
        default=1.0,
        gt=0,
        le=100_000,
        description="gateway seconds per real second; the polling intervals stay real "
        "seconds (at 60, interval_s = 60 polls once per simulated hour)",
    )
    clock_start: AwareDatetime | None = Field(
        default=None, description="gateway time at clock_anchor; default: now"
    )
    clock_anchor: AwareDatetime | None = Field(
        default=None,
        description="the real instant the clock read clock_start (kept across restarts); "
        "default: when the gateway starts",
    )


class GatewayConfig(Strict):
    gateway_id: str = Field(pattern=ID_PATTERN, description="the gateway's name on MQTT")
    store: Path = Field(description="the SQLite store (ledgers, outbox, meters)")
    buses: list[Bus] = Field(default_factory=list, description="see the bus tables below")
    mqtt: MqttSettings = Field(description="the uplink")
    polling: PollingSettings = Field(default=PollingSettings(), description="poll timing")
    tokens: TokenSettings = Field(default=TokenSettings(), description="token and command keys")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="least severe level logged"
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="json: one object per line"
    )
    home_assistant: HomeAssistantSettings = Field(
        default=HomeAssistantSettings(), description="dashboards for mini-grid operators"
    )
    simulation: SimulationSettings = Field(
        default=SimulationSettings(), description="demos and tests only"
    )

    @model_validator(mode="after")
    def _unique_buses(self) -> GatewayConfig:
        names = [b.name for b in self.buses]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"bus names must be unique: {', '.join(dupes)}")
        return self

    def bus(self, name: str) -> RtuBus | TcpBus:
        for b in self.buses:
            if b.name == name:
                return b
        raise KeyError(name)


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(name, ".".join(path), "environment override of a non-table")
        if path:
            node[path[-1]] = value
    return data


def parse_config(text: str, source: str, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Validate TOML text (``source`` names it in errors), with environment overrides."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, None, f"not valid TOML: {exc}") from None
    data = _apply_env(data, os.environ if env is None else env)
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or None
        raise ConfigError(source, key, err["msg"]) from None


def load_config(path: Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), None, f"cannot read: {exc}") from None
    return parse_config(text, str(path), env)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def to_toml(data: dict[str, Any]) -> str:
    """TOML text of a config document (scalars, tables and arrays of tables, one level):
    what provisioning, the demo and the tests write for the gateway to read."""
    head: list[str] = []
    tables: list[str] = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables += [f"\n[{key}]", *(f"{k} = {_toml_value(v)}" for k, v in value.items())]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                tables += [f"\n[[{key}]]", *(f"{k} = {_toml_value(v)}" for k, v in item.items())]
        else:
            head.append(f"{key} = {_toml_value(value)}")
    return "\n".join(head + tables) + "\n"
