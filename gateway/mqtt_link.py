"""The gateway's MQTT link: paho-mqtt 2.x driven from asyncio (the only paho import).

As aiomqtt does it: paho's socket is registered with the event loop
(``add_reader``/``add_writer``), paho's callbacks complete futures tracked by message
id, and the connection is an ``async with``. One session is one connection: when it
drops, :attr:`MqttLink.closed` completes and every pending publish fails with
:class:`MqttError`; reconnection is a loop the caller writes (``gateway.sync``).
The in-flight window is bounded here and paho's own queue is capped, so nothing
piles up in RAM while disconnected: undelivered messages stay in the store's outbox.
The futures awaiting acknowledgements live in ``gateway.mqtt_acks``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.inflight_window import InflightWindow
from gateway.mqtt_acks import Acknowledgements
from gateway.mqtt_terms import (
    BrokerEndpoint,
    IncomingMessage,
    MqttError,
    MqttLinkError,
    PublishRefusedError,
    Will,
)
from gateway.paho_client import PlainClient, client_class
from protocol.mqtt import topic_name_problem

log = logging.getLogger(__name__)

__all__ = [
    "BrokerEndpoint",
    "IncomingMessage",
    "InflightWindow",
    "MqttError",
    "MqttLink",
    "MqttLinkError",
    "PublishRefusedError",
    "Will",
]


class MqttLink:
    """One MQTT session with one broker. Use ``async with``."""

    def __init__(
        self,
        broker: BrokerEndpoint,
        *,
        client_id: str,
        protocol: Literal["5", "3.1.1"] = "5",
        will: Will | None = None,
        keepalive: int = 30,
        max_inflight: int = 64,
        connect_timeout: float = 10.0,
        incoming_limit: int = 1000,
        session_expiry: int = 0,
        client: type[PlainClient] | None = None,
    ) -> None:
        """``client``: the paho client class (default: :func:`client_class`'s choice)."""
        self.broker = broker
        self.protocol = protocol
        #: seconds the broker keeps this client's session (subscriptions and queued
        #: messages) after a disconnect; 0: a clean session at every connect
        self.session_expiry = session_expiry
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._keepalive = keepalive
        self._connect_timeout = connect_timeout
        self._client = (client or client_class())(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5 if protocol == "5" else paho.MQTTv311,
            clean_session=None if protocol == "5" else session_expiry == 0,
        )
        # The window is ours (InflightWindow): paho's own in-flight limit would only add
        # a scan of every queued message per PUBACK. Its queue is capped at the window,
        # so nothing piles up in paho while disconnected.
        self._client.max_inflight_messages_set(0)
        self._client.max_queued_messages_set(max_inflight)
        self.max_inflight = max_inflight
        self.window = InflightWindow(max_inflight)
        self._acks = Acknowledgements(self._loop, self.window)
        if broker.tls is not None:
            self._client.tls_set_context(broker.tls)
        if will is not None:
            self._client.will_set(will.topic, will.payload, qos=1, retain=will.retain)
        self._connack: asyncio.Future[None] = self._loop.create_future()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self.incoming: asyncio.Queue[IncomingMessage] = asyncio.Queue(incoming_limit)
        self._misc_task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None
        self._fd: int | None = None
        c = self._client
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._acks.on_publish
        c.on_subscribe = self._acks.on_subscribe
        c.on_message = self._on_message
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_socket_register_write
        c.on_socket_unregister_write = self._on_socket_unregister_write

    # -- paho callbacks (all run on the event loop thread, except socket_open during
    #    the executor connect, which is marshalled with call_soon_threadsafe)

    def _threadsafe(self, fn: Callable[[], None]) -> None:
        """Run now on the loop's thread (while the socket still exists), else marshal it."""
        if threading.get_ident() == self._loop_thread:
            fn()
        else:
            self._loop.call_soon_threadsafe(fn)

    def _on_socket_open(self, client: paho.Client, _u: object, sock: Any) -> None:
        self._sock = sock
        fd = sock.fileno()
        self._fd = fd
        self._threadsafe(lambda: self._loop.add_reader(fd, self._readable))

    def _on_socket_close(self, client: paho.Client, _u: object, sock: Any) -> None:
        self._threadsafe(self._drop)

    def _on_socket_register_write(self, client: paho.Client, _u: object, sock: Any) -> None:
        def register() -> None:
            if self._fd is not None:
                self._loop.add_writer(self._fd, self._writable)

        self._threadsafe(register)

    def _on_socket_unregister_write(self, client: paho.Client, _u: object, sock: Any) -> None:
        def unregister() -> None:
            if self._fd is not None:
                self._loop.remove_writer(self._fd)

        self._threadsafe(unregister)

    def _readable(self) -> None:
        client = self._client
        rc = client.loop_read()
        # paho handles as many packets per call as it has messages in flight (one when
        # idle): what it read ahead is processed now, as no readiness will come for it
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and client.has_buffered_input():
            rc = client.loop_read()

    def _writable(self) -> None:
        self._client.loop_write()

    def _on_connect(
        self, _c: paho.Client, _u: object, _f: object, rc: ReasonCode, _p: Properties | None
    ) -> None:
        if self._connack.done():
            return
        if rc.is_failure:
            self._connack.set_exception(MqttError("connection refused", str(rc)))
            return
        # MQTT 5: never more unacknowledged publishes than the broker says it takes.
        receive_max = getattr(_p, "ReceiveMaximum", None) if _p is not None else None
        if isinstance(receive_max, int) and 0 < receive_max < self.window.size:
            self.window.resize(receive_max)
        self._connack.set_result(None)

    def _on_disconnect(
        self, _c: paho.Client, _u: object, _f: object, rc: ReasonCode, _p: Properties | None
    ) -> None:
        error = MqttError("disconnected", str(rc))
        if not self._connack.done():
            self._connack.set_exception(error)
        self._acks.fail_all(error)
        if not self.closed.done():
            self.closed.set_result(None)
        self._acks.wake()

    def _on_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None) if props else None
        correlation = getattr(props, "CorrelationData", None) if props else None
        item = IncomingMessage(msg.topic, bytes(msg.payload), response_topic, correlation)
        try:
            self.incoming.put_nowait(item)
        except asyncio.QueueFull:
            log.warning("incoming MQTT queue full: dropped message on %s", msg.topic)

    async def _misc_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self._client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return

    # -- the async API

    def _connect(self) -> None:
        """paho's blocking connect (run in an executor), resuming the session if kept."""
        if self.protocol != "5":
            self._client.connect(self.broker.host, self.broker.port, keepalive=self._keepalive)
            return
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if self.session_expiry:
            props.SessionExpiryInterval = self.session_expiry
        self._client.connect(
            self.broker.host,
            self.broker.port,
            keepalive=self._keepalive,
            clean_start=self.session_expiry == 0,
            properties=props,
        )

    async def __aenter__(self) -> MqttLink:
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a
            # cancellation that arrives as the connect finishes, and a stop would be lost.
            async with asyncio.timeout(self._connect_timeout):
                await self._loop.run_in_executor(None, self._connect)
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            self._drop()
            raise MqttError(
                f"cannot connect to {self.broker}", str(exc) or type(exc).__name__
            ) from exc
        self._misc_task = asyncio.create_task(self._misc_loop(), name=f"mqtt-misc:{self.broker}")
        try:
            async with asyncio.timeout(self._connect_timeout):
                await asyncio.shield(self._connack)
        except TimeoutError as exc:
            await self._teardown()
            raise MqttError(f"no CONNACK from {self.broker}") from exc
        except MqttError:
            await self._teardown()
            raise
        log.info("MQTT connected to %s (protocol %s)", self.broker, self.protocol)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._teardown()

    def _drop(self) -> None:
        """Unregister the socket from the loop (once: paho may report the close twice)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)

    async def _teardown(self) -> None:
        if not self.closed.done():
            self._client.disconnect()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await asyncio.shield(self.closed)
        if self._misc_task is not None:
            self._misc_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._misc_task
        # paho closes the socket in disconnect; make sure nothing stays registered.
        self._drop()
        if not self.closed.done():
            self._on_disconnect(self._client, None, None, ReasonCode(PacketTypes.DISCONNECT), None)
        if not self._connack.done():
            self._connack.cancel()
        elif not self._connack.cancelled():
            self._connack.exception()  # mark retrieved

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        correlation_data: bytes | None = None,
    ) -> None:
        """Publish and wait for the broker's acknowledgement (PUBACK at QoS 1).

        At most ``max_inflight`` publishes wait at once; more callers queue here, in
        asyncio, never in paho. :class:`PublishRefusedError` for a topic no broker takes
        or a refusal in the PUBACK; :class:`MqttError` when the session is gone.
        """
        await self._publish(topic, lambda: payload, qos, retain, correlation_data)

    async def publish_fresh(
        self, topic: str, produce: Callable[[], bytes | None], *, retain: bool = False
    ) -> bool:
        """:meth:`publish` at QoS 1 with the payload made by ``produce()`` once a window
        slot is free, right before it goes to paho, so nothing newer can have been sent on
        the topic between the read and the send; ``produce`` returning None sends nothing
        (False)."""
        return await self._publish(topic, produce, 1, retain, None)

    async def _publish(
        self,
        topic: str,
        produce: Callable[[], bytes | None],
        qos: int,
        retain: bool,
        correlation_data: bytes | None,
    ) -> bool:
        await self.window.take()
        try:
            if self.closed.done():
                raise MqttError("not connected")
            payload = produce()
            if payload is None:
                return False
            props = None
            if correlation_data is not None and self.protocol == "5":
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                props.CorrelationData = correlation_data
            mid = self._send(topic, payload, qos, retain, props)
            if qos == 0:
                return True
            await self._acks.puback(mid)
            return True
        finally:
            self.window.give()
            self._acks.wake()  # a slot is free: the drain may be waiting for one

    def attach_acks(self, sink: Callable[[int, bool], None], wake: asyncio.Event) -> None:
        """Where the PUBACKs of :meth:`publish_nowait` go: ``sink(mid, ok)`` on the loop
        thread, then ``wake`` is set (also when the session closes)."""
        self._acks.attach(sink, wake)

    def publish_nowait(self, topic: str, payload: bytes, *, retain: bool = False) -> int | None:
        """A QoS 1 publish in a free window slot, without a future or a task (the outbox
        drain's path, at thousands a second); ``None`` when the window is full. The PUBACK
        goes to the sink given to :meth:`attach_acks`. Its message id is returned."""
        if not self._acks.attached:
            raise RuntimeError("attach_acks first")
        if self.closed.done():
            raise MqttError("not connected")
        if not self.window.try_take():
            return None
        try:
            return self._send(topic, payload, 1, retain, None)
        except MqttLinkError:
            self.window.give()
            raise

    def _send(
        self, topic: str, payload: bytes, qos: int, retain: bool, props: Properties | None
    ) -> int:
        """Hand one message to paho (both publish paths, holding a window slot); its mid.
        Refused (topic, paho's size checks) or :class:`MqttError` if paho cannot queue it."""
        problem = topic_name_problem(topic)
        if problem is not None:
            raise PublishRefusedError(f"topic {topic[:200]!r} refused", problem)
        try:
            info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        except ValueError as exc:  # paho's own checks (payload size, topic)
            raise PublishRefusedError("publish refused by paho", str(exc)) from None
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MqttError("publish failed", paho.error_string(info.rc))
        return info.mid

    async def subscribe(self, *topics: str, qos: int = 1) -> None:
        """Subscribe to every filter in ONE SUBSCRIBE packet: the broker's session then holds
        all of them or none, so a stop between two packets can never leave a persistent
        session that queues commands for one filter and silently drops the other's."""
        rc, mid = self._client.subscribe([(topic, qos) for topic in topics])
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise MqttError(f"subscribe to {', '.join(topics)} failed", paho.error_string(rc))
        await self._acks.suback(mid)
