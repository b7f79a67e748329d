"""The in-flight window of one MQTT session: at most ``size`` QoS 1 publishes wait for
their PUBACK, whoever sends them."""

from __future__ import annotations

import asyncio
import collections
import contextlib


class InflightWindow:
    """The bound on unacknowledged QoS 1 publishes of one session, shared by those that
    await their PUBACK (:meth:`MqttLink.publish`) and the outbox drain, which takes slots
    without waiting (:meth:`MqttLink.publish_nowait`). Waiters are served in order."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.used = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def try_take(self) -> bool:
        if self.used >= self.size or self._waiters:
            return False
        self.used += 1
        return True

    async def take(self) -> None:
        if self.try_take():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut  # the slot was handed over by give()
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.give()  # handed over as we were cancelled: pass it on
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)

    def give(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot moves to the waiter: used stays
                return
        self.used -= 1

    def resize(self, size: int) -> None:
        self.size = size
