"""The demo's view of the site: a headend-like MQTT subscriber to the gateway's topics."""

from __future__ import annotations

import os
import queue
from dataclasses import dataclass, field

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from prepaid_demo.world import GATEWAY_ID


@dataclass
class Viewer:
    """A headend-like MQTT subscriber to the gateway's topic tree (paho in its thread)."""

    broker: tuple[str, int]
    mqtt5: bool
    inbox: queue.SimpleQueue[tuple[str, bytes]] = field(default_factory=queue.SimpleQueue)
    connected: bool = False
    client: paho.Client = field(init=False)

    def __post_init__(self) -> None:
        protocol = paho.MQTTv5 if self.mqtt5 else paho.MQTTv311
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"demo-view-{os.getpid()}", protocol=protocol
        )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda _c, _u, msg: self.inbox.put((msg.topic, bytes(msg.payload)))

    def _on_connect(self, client: paho.Client, *_args: object) -> None:
        self.connected = True
        root = f"prepaid/v1/{GATEWAY_ID}"
        client.subscribe([(f"{root}/status", 1), (f"{root}/meters/+/+", 1)])

    def _on_disconnect(self, *_args: object) -> None:
        self.connected = False

    def start(self) -> None:
        self.client.connect_async(*self.broker, keepalive=10)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
