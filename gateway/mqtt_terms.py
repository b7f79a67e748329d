"""What the gateway's MQTT link talks in: where a broker is, the Last Will, a message in,
and the link's errors (``mqtt_link.py`` drives paho; these need no paho)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from gateway.errors import GatewayError


class MqttLinkError(GatewayError):
    """Something went wrong on the MQTT link; carries paho's reason when there is one."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        self.reason = reason
        super().__init__(message if reason is None else f"{message}: {reason}")


class MqttError(MqttLinkError):
    """The broker connection failed or dropped: the session is over."""


class PublishRefusedError(MqttLinkError):
    """One publish was refused (a failure reason code in the broker's PUBACK, or a topic
    no broker would take): that message is lost, the session goes on."""


@dataclass(frozen=True, slots=True)
class BrokerEndpoint:
    host: str
    port: int
    tls: ssl.SSLContext | None = None

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    topic: str
    payload: bytes
    response_topic: str | None = None
    correlation_data: bytes | None = None


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    retain: bool = True
