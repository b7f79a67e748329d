"""Resends beside commands: a headend's ``resend`` is queued and published in the
background, paced, so that it never delays a top-up or a relay command.

A request asks for a meter's stored messages from ``from_seq``; it gets at most
``MAX_ROWS`` of them (the result says where it stopped, so the headend asks again from
there). A meter has at most one resend waiting: a second request for it is merged into the
first (from the lower seq), so the queue never holds more than one entry per meter, and
rows are read from the store only as they are sent. Everything resent shares one pace,
``RATE`` messages a second, however many requesters ask and however often; resent
messages take one in-flight slot at a time, so live traffic and command results always
find room in the window.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.mqtt_link import MqttLink, PublishRefusedError
from gateway.store import RawOutboxRow
from gateway.sync import outbox_message
from protocol.mqtt import Topics

log = logging.getLogger(__name__)

#: Most messages one resend request publishes.
MAX_ROWS = 1000
#: Resent messages a second, at most, for all requesters together.
RATE = 500.0
#: Rows read from the store at a time while resending.
CHUNK = 100

#: (meter, from seq, at most n) -> rows as stored, in seq order
RowsSince = Callable[[str, int, int], Sequence[RawOutboxRow]]
#: the same, only their seqs
SeqsSince = Callable[[str, int, int], Sequence[int]]


@dataclass
class _Pending:
    """One meter's resend: the seqs from ``next_seq`` on, ``left`` of them at most."""

    meter_id: str
    next_seq: int
    left: int


@dataclass(frozen=True, slots=True)
class ResendPlan:
    """What a request was answered: how many messages follow, where to ask again."""

    meter_id: str
    count: int
    next_seq: int | None


class ResendQueue:
    """Accepts resend requests (:meth:`plan`) and publishes them (:meth:`run`, one task
    per MQTT session). Requests outlive a session: what was not sent goes in the next."""

    def __init__(
        self,
        rows_since: RowsSince,
        seqs_since: SeqsSince,
        topics: Topics,
        *,
        rate: float = RATE,
        max_rows: int = MAX_ROWS,
    ) -> None:
        self._rows_since = rows_since
        self._seqs_since = seqs_since
        self.topics = topics
        self.rate = rate
        self.max_rows = max_rows
        self._queue: dict[str, _Pending] = {}  # in arrival order
        self._ready = asyncio.Event()
        self.resent = 0

    def plan(self, meter_id: str, from_seq: int) -> ResendPlan:
        """Queue a request (merged with the meter's waiting one, if any)."""
        pending = self._queue.get(meter_id)
        start = from_seq if pending is None else min(from_seq, pending.next_seq)
        seqs = self._seqs_since(meter_id, start, self.max_rows + 1)
        count = min(len(seqs), self.max_rows)
        next_seq = seqs[self.max_rows] if len(seqs) > self.max_rows else None
        if count:
            if pending is None:
                self._queue[meter_id] = _Pending(meter_id, start, count)
            else:
                pending.next_seq, pending.left = start, count
            self._ready.set()
        return ResendPlan(meter_id, count, next_seq)

    async def run(self, link: MqttLink) -> None:
        """Publish queued requests in order, one message in flight, at most ``rate`` a
        second, until the session ends (a request cut short goes on next session)."""
        gap = 1.0 / self.rate
        while True:
            while not self._queue:
                self._ready.clear()
                await self._ready.wait()
            pending = next(iter(self._queue.values()))
            rows = self._rows_since(pending.meter_id, pending.next_seq, min(CHUNK, pending.left))
            if not rows:
                del self._queue[pending.meter_id]
                continue
            for row in rows:
                started = time.monotonic()
                try:
                    payload = outbox_message(self.topics.gateway_id, row)
                    await link.publish(self.topics.meter(row.meter_id, row.kind), payload)
                except PublishRefusedError as exc:
                    log.warning("resent message %s/%d refused: %s", row.meter_id, row.seq, exc)
                pending.next_seq, pending.left = row.seq + 1, pending.left - 1
                self.resent += 1
                await asyncio.sleep(max(0.0, gap - (time.monotonic() - started)))
            if pending.left <= 0:
                del self._queue[pending.meter_id]
