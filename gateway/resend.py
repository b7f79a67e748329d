"""Resends beside commands: a headend's ``resend`` is queued and published in the
background, paced, so that it never delays a top-up or a relay command.

A request asks for a meter's stored messages from ``from_seq``; it gets at most
``MAX_ROWS`` of them (the result says where it stopped, so the headend asks again from
there). At most one request per meter waits or runs, and at most ``MAX_QUEUED`` in all: a
requester cannot make the gateway publish more than ``RATE`` resent messages a second,
however often it asks. Resent messages take one in-flight slot at a time, so live
traffic and command results always find room in the window.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.mqtt_link import MqttLink, PublishRefusedError
from gateway.store import OutboxRow
from gateway.sync import envelope
from protocol.mqtt import Topics

log = logging.getLogger(__name__)

#: Most messages one resend request publishes.
MAX_ROWS = 1000
#: Most resend requests waiting or running at once (one per meter).
MAX_QUEUED = 32
#: Resent messages a second, at most (a bound on what any requester can cause).
RATE = 500.0


@dataclass(frozen=True, slots=True)
class ResendPlan:
    """What one accepted request will publish."""

    meter_id: str
    rows: Sequence[OutboxRow]
    truncated: bool

    @property
    def next_seq(self) -> int | None:
        """Where to ask again from when the request was cut at ``MAX_ROWS``."""
        return self.rows[-1].seq + 1 if self.truncated and self.rows else None


class ResendBusyError(Exception):
    """A resend for this meter is already waiting, or too many are."""


class ResendQueue:
    """Accepts resend requests (:meth:`plan`) and publishes them (:meth:`run`, one task
    per MQTT session). Requests outlive a session: what was not sent goes in the next."""

    def __init__(
        self,
        rows_since: Callable[[str, int, int], Sequence[OutboxRow]],
        topics: Topics,
        *,
        rate: float = RATE,
        max_rows: int = MAX_ROWS,
        max_queued: int = MAX_QUEUED,
    ) -> None:
        self._rows_since = rows_since
        self.topics = topics
        self.rate = rate
        self.max_rows = max_rows
        self.max_queued = max_queued
        self._queue: collections.deque[ResendPlan] = collections.deque()
        self._meters: set[str] = set()
        self._ready = asyncio.Event()
        self.resent = 0

    def plan(self, meter_id: str, from_seq: int) -> ResendPlan:
        """Queue a request; :class:`ResendBusyError` when the meter already has one
        waiting or the queue is full."""
        if meter_id in self._meters:
            raise ResendBusyError(f"a resend for {meter_id} is already under way")
        if len(self._queue) >= self.max_queued:
            raise ResendBusyError(f"{len(self._queue)} resends are already waiting")
        rows = self._rows_since(meter_id, from_seq, self.max_rows + 1)
        plan = ResendPlan(meter_id, rows[: self.max_rows], len(rows) > self.max_rows)
        if plan.rows:
            self._queue.append(plan)
            self._meters.add(meter_id)
            self._ready.set()
        return plan

    async def run(self, link: MqttLink) -> None:
        """Publish queued requests in order, one message in flight, at most ``rate`` a
        second, until the session ends (a request cut short is finished next session)."""
        gap = 1.0 / self.rate
        while True:
            while not self._queue:
                self._ready.clear()
                await self._ready.wait()
            plan = self._queue[0]
            sent = 0
            try:
                for row in plan.rows:
                    started = time.monotonic()
                    try:
                        await link.publish(
                            self.topics.meter(row.meter_id, row.kind),
                            envelope(self.topics.gateway_id, row),
                        )
                    except PublishRefusedError as exc:
                        log.warning("resent message %s/%d refused: %s", row.meter_id, row.seq, exc)
                    sent += 1
                    self.resent += 1
                    await asyncio.sleep(max(0.0, gap - (time.monotonic() - started)))
            finally:
                if sent < len(plan.rows):
                    self._queue[0] = ResendPlan(plan.meter_id, plan.rows[sent:], plan.truncated)
            self._queue.popleft()
            self._meters.discard(plan.meter_id)
