"""Store-and-forward to the headend: the MQTT session loop and the outbox drain.

The outbox lives in SQLite, never in RAM: each session re-reads unacknowledged rows in
order and publishes them at QoS 1 through a bounded in-flight window; a row is marked
acknowledged only after the broker's PUBACK. Acknowledged rows stay for the retention
period so a headend that sees a sequence gap can ask for a resend. Reconnection is a
loop you can read: brokers in turn, jittered exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from gateway.mqtt_link import BrokerEndpoint, MqttError, MqttLink, Will
from gateway.store import OutboxRow
from protocol.mqtt import SCHEMA_VERSION, Topics

log = logging.getLogger(__name__)

#: Acknowledgements are written to the store in batches, at least this often...
ACK_FLUSH_S = 0.25
#: ... or when this many are waiting.
ACK_FLUSH_ROWS = 1024
#: Kinds whose latest message is retained by the broker.
RETAINED_KINDS = frozenset({"balance"})


class Outbox(Protocol):
    """What the drain needs from the store."""

    def outbox_pending(self, limit: int = ..., after_id: int = ...) -> Sequence[OutboxRow]: ...

    def mark_acked(self, ids: Sequence[int], at: datetime) -> None: ...


def utc_iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def envelope(gateway_id: str, row: OutboxRow) -> bytes:
    """The published JSON of one outbox row: the common fields, then the body."""
    message = {
        "v": SCHEMA_VERSION,
        "gateway": gateway_id,
        "meter": row.meter_id,
        "seq": row.seq,
        "ts": utc_iso(row.ts),
        "kind": row.kind,
        **row.body,
    }
    return json.dumps(message, separators=(",", ":"), sort_keys=False).encode()


class OutboxDrain:
    """Publishes the outbox in id order over one session; wake it when rows are added."""

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
        self._acked: list[int] = []
        self._acked_since = time.monotonic()
        self.published = 0
        self.last_sync: datetime | None = None

    async def run(self, link: MqttLink) -> None:
        """Drain until the session ends (raises :class:`MqttError` then)."""
        after_id = 0
        inflight: set[asyncio.Task[int]] = set()
        try:
            while True:
                rows = self.outbox.outbox_pending(self.batch, after_id)
                if not rows:
                    if inflight:
                        await asyncio.wait(inflight)
                    self._collect(inflight, flush=True)
                    await self._idle(link)
                    continue
                for row in rows:
                    while len(inflight) >= link.max_inflight:
                        await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                        self._collect(inflight)
                    inflight.add(
                        asyncio.create_task(
                            self._send(link, row), name=f"publish:{row.meter_id}:{row.seq}"
                        )
                    )
                    after_id = row.id
                self._collect(inflight)
        finally:
            for task in inflight:
                task.cancel()
            if inflight:
                await asyncio.wait(inflight)
            with contextlib.suppress(MqttError, asyncio.CancelledError):
                self._collect(inflight, flush=True)

    async def _send(self, link: MqttLink, row: OutboxRow) -> int:
        await link.publish(
            self.topics.meter(row.meter_id, row.kind),
            envelope(self.topics.gateway_id, row),
            retain=row.kind in RETAINED_KINDS,
        )
        return row.id

    def _collect(self, inflight: set[asyncio.Task[int]], *, flush: bool = False) -> None:
        """Record the acknowledged rows of finished publishes (in batches: at most every
        ACK_FLUSH_S, or ACK_FLUSH_ROWS rows, and whenever the drain pauses); re-raise a
        failure."""
        done = {t for t in inflight if t.done()}
        inflight -= done
        self._acked += [t.result() for t in done if not t.cancelled() and t.exception() is None]
        due = time.monotonic() - self._acked_since >= ACK_FLUSH_S
        if self._acked and (flush or due or len(self._acked) >= ACK_FLUSH_ROWS):
            now = self.clock()
            self.outbox.mark_acked(sorted(self._acked), now)
            self.published += len(self._acked)
            self.last_sync = now
            self._acked = []
            self._acked_since = time.monotonic()
        for t in done:
            if not t.cancelled() and (exc := t.exception()) is not None:
                raise exc

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
    protocol: str,
    will: Will,
    body: SessionBody,
    backoff: Backoff,
    keepalive: int = 30,
    max_inflight: int = 64,
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
                protocol="3.1.1" if protocol == "3.1.1" else "5",
                will=will,
                keepalive=keepalive,
                max_inflight=max_inflight,
            ) as link:
                attempt = 0
                on_state("connected", broker)
                await body(link)
        except MqttError as exc:
            log.warning("MQTT session with %s ended: %s", broker, exc)
        on_state("disconnected", None)
        index += 1
        if index % len(brokers) == 0:
            attempt += 1
            await asyncio.sleep(backoff.delay(attempt, rng))
