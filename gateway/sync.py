"""Store-and-forward to the headend: the MQTT session loop and the outbox drain.

The outbox lives in SQLite, never in RAM: each session re-reads unacknowledged rows in
order and publishes them at QoS 1 through a bounded in-flight window; a row is marked
acknowledged only after the broker's PUBACK. Acknowledged rows stay for the retention
period so a headend that sees a sequence gap can ask for a resend. Reconnection is a
loop you can read: brokers in turn, jittered exponential backoff.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Literal, Protocol

from gateway.mqtt_link import BrokerEndpoint, MqttError, MqttLink, Will
from gateway.store import OutboxRow, RawOutboxRow
from protocol.messages import encode_message, utc_stamp
from protocol.mqtt import Topics

log = logging.getLogger(__name__)

#: Kinds whose latest message is retained by the broker.
RETAINED_KINDS = frozenset({"balance"})


class Outbox(Protocol):
    """What the drain needs from the store."""

    def outbox_pending(self, limit: int = ..., after_id: int = ...) -> Sequence[OutboxRow]: ...

    def outbox_pending_raw(
        self, limit: int = ..., after_id: int = ...
    ) -> Sequence[RawOutboxRow]: ...

    def mark_acked(self, ids: Sequence[int], at: datetime) -> None: ...


@lru_cache(maxsize=4096)
def _stamp(stored: str) -> str:
    """The envelope time of a stored row time (a drain sees the same few over and over)."""
    return utc_stamp(datetime.fromisoformat(stored))


def outbox_message(gateway_id: str, row: RawOutboxRow) -> bytes:
    """The published bytes of one outbox row as stored (its body is not decoded)."""
    return encode_message(
        row.kind,
        row.body_json,
        gateway=gateway_id,
        meter=row.meter_id,
        seq=row.seq,
        ts=_stamp(row.ts),
    )


class OutboxDrain:
    """Publishes the outbox in id order over one session; wake it when rows are added.

    The hot path has no task or future per message: rows go out through
    :meth:`MqttLink.publish_nowait` while the window has room, PUBACKs come back as
    message ids, and acknowledged rows go to the store as they come (the store batches
    their writes, see ``gateway/store/acks.py``)."""

    def __init__(
        self,
        outbox: Outbox,
        topics: Topics,
        *,
        clock: Callable[[], datetime],
        batch: int = 256,
    ) -> None:
        self.outbox = outbox
        self.topics = topics
        self.clock = clock
        self.batch = batch
        self.wake = asyncio.Event()
        self.published = 0
        #: outbox rows the broker refused (left unacknowledged)
        self.refused = 0
        self.last_sync: datetime | None = None

    async def run(self, link: MqttLink) -> None:
        """Drain until the session ends (raises :class:`MqttError` then)."""
        after_id = 0
        inflight: dict[int, int] = {}  # message id -> outbox row id
        pubacks: collections.deque[tuple[int, bool]] = collections.deque()
        acked = asyncio.Event()
        link.attach_acks(lambda mid, ok: pubacks.append((mid, ok)), acked)
        gateway_id, meter_topic = self.topics.gateway_id, self.topics.meter
        try:
            while True:
                rows = self._pending(after_id)
                if not rows:
                    while inflight:
                        await self._await_acks(link, acked, pubacks)
                        self._collect(inflight, pubacks)
                    await self._idle(link)
                    continue
                for row in rows:
                    payload = outbox_message(gateway_id, row)
                    topic = meter_topic(row.meter_id, row.kind)
                    retain = row.kind in RETAINED_KINDS
                    while (mid := link.publish_nowait(topic, payload, retain=retain)) is None:
                        await self._await_acks(link, acked, pubacks)
                        self._collect(inflight, pubacks)
                    inflight[mid] = row.id
                    after_id = row.id
                self._collect(inflight, pubacks)
        finally:
            with contextlib.suppress(MqttError):
                self._collect(inflight, pubacks)

    def _pending(self, after_id: int) -> Sequence[RawOutboxRow]:
        return self.outbox.outbox_pending_raw(self.batch, after_id)

    @staticmethod
    async def _await_acks(
        link: MqttLink, acked: asyncio.Event, pubacks: collections.deque[tuple[int, bool]]
    ) -> None:
        """Until a PUBACK frees a window slot (or the session ends); at once when
        acknowledgements are already waiting to be collected."""
        if link.closed.done():
            raise MqttError("session closed")
        if pubacks:
            return
        acked.clear()
        await acked.wait()
        if link.closed.done():
            raise MqttError("session closed")

    def _collect(
        self, inflight: dict[int, int], pubacks: collections.deque[tuple[int, bool]]
    ) -> None:
        """Hand the acknowledged rows to the store. A row the broker refused (MQTT 5: a
        failure reason in its PUBACK, e.g. an ACL) stays unacknowledged and goes again in
        the next session; the session goes on with the rows after it."""
        acked: list[int] = []
        while pubacks:
            mid, ok = pubacks.popleft()
            row_id = inflight.pop(mid, None)
            if row_id is None:
                continue
            if ok:
                acked.append(row_id)
            else:
                self.refused += 1
                log.error(
                    "the broker refused outbox row %d (kept, sent again next session)", row_id
                )
        if acked:
            now = self.clock()
            self.outbox.mark_acked(acked, now)
            self.published += len(acked)
            self.last_sync = now

    async def _idle(self, link: MqttLink) -> None:
        """Sleep until new rows are announced or the session closes."""
        self.wake.clear()
        woken: asyncio.Future[object] = asyncio.ensure_future(self.wake.wait())
        closed: asyncio.Future[object] = asyncio.ensure_future(asyncio.shield(link.closed))
        try:
            await asyncio.wait({woken, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            closed.cancel()
        if link.closed.done():
            raise MqttError("session closed")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Jittered exponential backoff: full jitter between ``low`` and the growing cap."""

    low: float = 0.5
    high: float = 60.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        cap = min(self.high, self.low * (2 ** min(attempt, 20)))
        return rng.uniform(self.low, max(self.low, cap))


SessionBody = Callable[[MqttLink], Awaitable[None]]


async def run_sessions(
    brokers: Sequence[BrokerEndpoint],
    *,
    client_id: str,
    protocol: Literal["5", "3.1.1"],
    will: Will,
    body: SessionBody,
    backoff: Backoff,
    keepalive: int = 30,
    max_inflight: int = 64,
    session_expiry: int = 0,
    on_state: Callable[[str, BrokerEndpoint | None], None] = lambda _s, _b: None,
    rng: random.Random | None = None,
) -> None:
    """Connect to each broker in turn and run ``body`` for as long as the session lasts;
    never returns except by cancellation."""
    rng = rng or random.Random()
    attempt = 0
    index = 0
    while True:
        broker = brokers[index % len(brokers)]
        try:
            async with MqttLink(
                broker,
                client_id=client_id,
                protocol=protocol,
                will=will,
                keepalive=keepalive,
                max_inflight=max_inflight,
                session_expiry=session_expiry,
            ) as link:
                attempt = 0
                on_state("connected", broker)
                await body(link)
        except MqttError as exc:
            log.warning("MQTT session with %s ended: %s", broker, exc)
        except Exception:
            # A fault of ours in the session: the uplink is not what enforces supply, so
            # log it, count on the next session, and never let it end the gateway.
            log.exception("MQTT session with %s failed; reconnecting", broker)
        on_state("disconnected", None)
        index += 1
        if index % len(brokers) == 0:
            attempt += 1
            await asyncio.sleep(backoff.delay(attempt, rng))
