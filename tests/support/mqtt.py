"""A small blocking paho-mqtt 2.x client for tests: connect, subscribe, publish at QoS 1
and wait for what is delivered, by event, never by sleeping."""

from __future__ import annotations

import queue
import ssl
import threading
from dataclasses import dataclass
from types import TracebackType

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tests.support.mosquitto import Mosquitto


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class ConnectRefusedError(Exception):
    """The broker refused or dropped the connection; carries paho's reason."""


class TestClient:
    """A test's MQTT 5 client for one broker; use as a context manager."""

    __test__ = False

    def __init__(
        self,
        broker: Mosquitto,
        client_id: str,
        *,
        cert_name: str | None = None,
        persistent: bool = False,
    ) -> None:
        self.broker = broker
        self.persistent = persistent
        self.messages: queue.Queue[Received] = queue.Queue()
        self._connected = threading.Event()
        self._connect_result: str | None = None
        #: the broker's CONNACK said it kept our session (a persistent one)
        self.session_present: bool | None = None
        self._subscribed: dict[int, threading.Event] = {}
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
        )
        if broker.tls is not None:
            ctx = ssl.create_default_context(cafile=str(broker.tls.ca))
            if cert_name is not None:
                files = broker.tls.clients[cert_name]
                ctx.load_cert_chain(str(files.cert), str(files.key))
            self._client.tls_set_context(ctx)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe

    def _on_connect(
        self,
        _c: paho.Client,
        _u: object,
        flags: paho.ConnectFlags,
        rc: ReasonCode,
        _p: Properties | None,
    ) -> None:
        self.session_present = bool(flags.session_present)
        self._connect_result = str(rc)
        self._connected.set()

    def _on_disconnect(
        self, _c: paho.Client, _u: object, _f: object, rc: ReasonCode, _p: Properties | None
    ) -> None:
        if not self._connected.is_set():
            self._connect_result = f"disconnected: {rc}"
            self._connected.set()

    def _on_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        self.messages.put(Received(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain)))

    def _on_subscribe(
        self, _c: paho.Client, _u: object, mid: int, _rc: list[ReasonCode], _p: Properties | None
    ) -> None:
        self._subscribed.setdefault(mid, threading.Event()).set()

    def connect(self, timeout: float = 10.0) -> None:
        try:
            if self.persistent:
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = 3600
                self._client.connect(
                    self.broker.host, self.broker.port, clean_start=False, properties=props
                )
            else:
                self._client.connect(self.broker.host, self.broker.port)
        except (OSError, ssl.SSLError) as exc:
            raise ConnectRefusedError(str(exc)) from exc
        self._client.loop_start()
        problem = None
        if not self._connected.wait(timeout):
            problem = f"no CONNACK within {timeout}s"
        elif self._connect_result != "Success":
            problem = self._connect_result or "unknown"
        if problem is not None:
            self._client.disconnect()
            self._client.loop_stop()  # the network thread is ours: never left behind
            raise ConnectRefusedError(problem)

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 5.0) -> None:
        rc, mid = self._client.subscribe(topic, qos)
        assert rc == paho.MQTT_ERR_SUCCESS, rc
        assert mid is not None
        if not self._subscribed.setdefault(mid, threading.Event()).wait(timeout):
            raise TimeoutError(f"no SUBACK for {topic}")

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        timeout: float = 5.0,
        *,
        response_topic: str | None = None,
        correlation: bytes | None = None,
    ) -> None:
        """Publish and wait for the broker's acknowledgement (QoS 1); MQTT 5 response
        topic and correlation data when given."""
        props = None
        if response_topic is not None or correlation is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if response_topic is not None:
                props.ResponseTopic = response_topic
            if correlation is not None:
                props.CorrelationData = correlation
        info = self._client.publish(topic, payload, qos=qos, properties=props)
        info.wait_for_publish(timeout)
        assert info.is_published(), f"not acknowledged: {topic}"

    def next_message(self, timeout: float = 5.0) -> Received:
        return self.messages.get(timeout=timeout)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> TestClient:
        self.connect()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
