"""The acknowledgements one MQTT session waits for, by message id.

A publish or subscribe that awaits its PUBACK/SUBACK holds a future here, which paho's
``on_publish``/``on_subscribe`` complete (or fail with the broker's reason code). The
outbox drain's publishes have no future (thousands a second): their PUBACKs go to the
sink it attached, which frees their window slot and wakes the drain. When the session
drops, every waiter fails at once, so nobody waits for an acknowledgement that cannot
come.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.inflight_window import InflightWindow
from gateway.mqtt_terms import MqttError, PublishRefusedError


class Acknowledgements:
    """The PUBACKs and SUBACKs awaited on one session (:class:`gateway.mqtt_link.MqttLink`),
    whose in-flight ``window`` a sink-delivered PUBACK gives a slot back to."""

    def __init__(self, loop: asyncio.AbstractEventLoop, window: InflightWindow) -> None:
        self._loop = loop
        self._window = window
        self._publishes: dict[int, asyncio.Future[None]] = {}
        self._subscribes: dict[int, asyncio.Future[None]] = {}
        self._sink: Callable[[int, bool], None] | None = None
        self._wake: asyncio.Event | None = None

    def attach(self, sink: Callable[[int, bool], None], wake: asyncio.Event) -> None:
        self._sink = sink
        self._wake = wake

    @property
    def attached(self) -> bool:
        return self._sink is not None

    def wake(self) -> None:
        """Tell the drain something changed (an ack, a free slot, the session gone)."""
        if self._wake is not None:
            self._wake.set()

    async def puback(self, mid: int) -> None:
        """Until the PUBACK of ``mid`` (which may have come already: then at once)."""
        fut = self._publishes.get(mid)
        if fut is None:
            fut = self._loop.create_future()
            self._publishes[mid] = fut
        await fut

    async def suback(self, mid: int) -> None:
        fut: asyncio.Future[None] = self._loop.create_future()
        self._subscribes[mid] = fut
        await fut

    def fail_all(self, error: MqttError) -> None:
        """The session is gone: every waiter gets ``error``."""
        for fut in [*self._publishes.values(), *self._subscribes.values()]:
            if not fut.done():
                fut.set_exception(error)
        self._publishes.clear()
        self._subscribes.clear()

    # -- paho callbacks (on the event loop thread)

    def on_publish(
        self, _c: paho.Client, _u: object, mid: int, rc: ReasonCode, _p: Properties | None
    ) -> None:
        fut = self._publishes.pop(mid, None)
        if fut is None:
            if self._sink is not None:
                self._window.give()
                self._sink(mid, not rc.is_failure)
                if self._wake is not None:  # inline: the drain's path, per PUBACK
                    self._wake.set()
            return
        if fut.done():
            return
        if rc.is_failure:
            fut.set_exception(PublishRefusedError("publish refused", str(rc)))
        else:
            fut.set_result(None)

    def on_subscribe(
        self, _c: paho.Client, _u: object, mid: int, rcs: list[ReasonCode], _p: Properties | None
    ) -> None:
        fut = self._subscribes.pop(mid, None)
        if fut is None or fut.done():
            return
        failed = [str(rc) for rc in rcs if rc.is_failure]
        if failed:
            fut.set_exception(MqttError("subscribe refused", ", ".join(failed)))
        else:
            fut.set_result(None)
