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

Each requester has its own budget besides, so that one of them cannot keep the shared
pace to itself: ``resend`` is unsigned (its shape is a contract), and the one name MQTT
gives a requester is the topic its result goes to (the MQTT 5 response topic, or
``cmd/result`` for all MQTT 3.1.1 clients together). A request costs the rows it asks for
(at least one); a requester holds ``REQUESTER_BURST`` rows at most, refilled at
``REQUESTER_RATE`` a second, and a request its budget cannot pay is refused
(:class:`ResendRateLimitedError`), nothing queued.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.errors import GatewayError
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
#: Rows one requester (a result topic) may ask for at once: ten full requests.
REQUESTER_BURST = 10 * MAX_ROWS
#: Rows a second a requester's budget is refilled with: a fifth of the shared pace.
REQUESTER_RATE = RATE / 5
#: Requesters' budgets held at once; past it, those full again are forgotten.
REQUESTERS_HELD = 1024

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


class ResendRateLimitedError(GatewayError):
    """A requester asked for more rows than its budget holds now."""

    def __init__(self, requester: str, cost: int, retry_after_s: float) -> None:
        super().__init__(
            f"this requester's resends are over its budget ({REQUESTER_BURST} rows, "
            f"{REQUESTER_RATE * 60:.0f} a minute): {cost} rows asked, ask again in "
            f"{retry_after_s:.0f} s"
        )
        self.requester = requester
        self.retry_after_s = retry_after_s


@dataclass
class _Budget:
    """A token bucket of rows: ``rows`` left at monotonic time ``at``."""

    rows: float
    at: float


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
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rows_since = rows_since
        self._seqs_since = seqs_since
        self.topics = topics
        self.rate = rate
        self.max_rows = max_rows
        self.monotonic = monotonic
        self._queue: dict[str, _Pending] = {}  # in arrival order
        self._ready = asyncio.Event()
        self._budgets: dict[str, _Budget] = {}
        self.resent = 0

    def plan(self, meter_id: str, from_seq: int, requester: str) -> ResendPlan:
        """Queue a request (merged with the meter's waiting one, if any), paid from
        ``requester``'s budget (raises :class:`ResendRateLimitedError` when it cannot)."""
        pending = self._queue.get(meter_id)
        start = from_seq if pending is None else min(from_seq, pending.next_seq)
        seqs = self._seqs_since(meter_id, start, self.max_rows + 1)
        count = min(len(seqs), self.max_rows)
        next_seq = seqs[self.max_rows] if len(seqs) > self.max_rows else None
        self._pay(requester, max(1, count))
        if count:
            if pending is None:
                self._queue[meter_id] = _Pending(meter_id, start, count)
            else:
                pending.next_seq, pending.left = start, count
            self._ready.set()
        return ResendPlan(meter_id, count, next_seq)

    def _pay(self, requester: str, cost: int) -> None:
        now = self.monotonic()
        if len(self._budgets) >= REQUESTERS_HELD:
            self._budgets = {
                r: b for r, b in self._budgets.items() if self._left(b, now) < REQUESTER_BURST
            }
        budget = self._budgets.get(requester)
        left = REQUESTER_BURST if budget is None else self._left(budget, now)
        if left < cost:
            raise ResendRateLimitedError(requester, cost, (cost - left) / REQUESTER_RATE)
        self._budgets[requester] = _Budget(left - cost, now)

    @staticmethod
    def _left(budget: _Budget, now: float) -> float:
        return min(REQUESTER_BURST, budget.rows + (now - budget.at) * REQUESTER_RATE)

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
