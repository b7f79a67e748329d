"""Rebirth: every new MQTT session republishes each meter's latest balance, retained.

A broker that comes back without its retained messages (killed before its autosave, or a
standby taking over) would otherwise show a headend that joins later no balance, or an old
one, for every meter whose balance does not change again, which for an idle meter may be
never. So, as Sparkplug does with its birth certificates, each session starts with the
gateway's status (``runner.py``) and then this: every enrolled meter's latest balance,
retained, the same bytes as first sent (same ``seq``: a headend that already has it sees a
duplicate, as QoS 1 allows).

Balances go one in flight, at most ``RATE`` a second, so the drain's live messages and
command results always find room in the window. Each is read from the store right before it
goes to paho, and only if the broker acknowledged it: a newer row the drain has still to
send goes with the drain, in ``seq`` order, after this one, so a rebirth never leaves an
older balance over a newer one.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gateway.mqtt_link import MqttLink, PublishRefusedError
from gateway.store import RawOutboxRow
from gateway.sync import outbox_message
from protocol.mqtt import Topics

log = logging.getLogger(__name__)

#: Balances republished a second, at most.
RATE = 1000.0


@dataclass(frozen=True, slots=True)
class RebirthDone:
    """How the last rebirth went."""

    meters: int
    republished: int
    seconds: float


class Rebirth:
    """Republishes each meter's latest acknowledged balance, retained (:meth:`run`, one
    task per MQTT session; it ends when every meter had its turn)."""

    def __init__(
        self,
        latest_balance: Callable[[str], RawOutboxRow | None],
        meter_ids: Callable[[], Iterable[str]],
        topics: Topics,
        *,
        rate: float = RATE,
    ) -> None:
        self._latest_balance = latest_balance
        self._meter_ids = meter_ids
        self.topics = topics
        self.rate = rate
        self.last: RebirthDone | None = None

    async def run(self, link: MqttLink) -> None:
        started = time.monotonic()
        meters = list(self._meter_ids())
        republished = 0
        for n, meter_id in enumerate(meters):
            # paced from the start, so a slow PUBACK is caught up rather than added
            await asyncio.sleep(max(0.0, started + n / self.rate - time.monotonic()))
            try:
                if await link.publish_fresh(
                    self.topics.meter(meter_id, "balance"),
                    functools.partial(self._payload, meter_id),
                    retain=True,
                ):
                    republished += 1
            except PublishRefusedError as exc:
                log.warning("rebirth: the balance of %s was refused: %s", meter_id, exc)
        self.last = RebirthDone(len(meters), republished, time.monotonic() - started)
        log.debug(  # routine on every session: the operator's log stays for what is not
            "rebirth: %d of %d meters' latest balances republished (retained) in %.1f s",
            republished,
            len(meters),
            self.last.seconds,
        )

    def _payload(self, meter_id: str) -> bytes | None:
        row = self._latest_balance(meter_id)
        return None if row is None else outbox_message(self.topics.gateway_id, row)
