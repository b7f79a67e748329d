"""Rebirth on a real broker and store: each meter's latest balance is republished retained, byte for byte as the drain sent it, only once the broker acknowledged it (a meter whose latest is still the drain's gets nothing, not an older one), at most ``rate`` a second; ``MqttLink.publish_fresh`` makes its payload only once a window slot is free, and sends nothing for None."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.core.events import ReadingReceived
from gateway.core.meter_state import enrol
from gateway.core.settings import MeterSettings
from gateway.core.step import step
from gateway.core.tariff import FlatPricing, Tariff, TariffSchedule
from gateway.mqtt_link import BrokerEndpoint, MqttLink
from gateway.rebirth import Rebirth
from gateway.store import MeterRecord, OutboxRow, Store
from gateway.sync import outbox_message
from protocol.mqtt import Topics
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import Received, TestClient

pytestmark = [pytest.mark.broker, pytest.mark.asyncio]

NOW = datetime(2026, 11, 2, 12, tzinfo=UTC)
SETTINGS = MeterSettings(TariffSchedule.single(Tariff("GBP", FlatPricing(Decimal(100)))))
TOPICS = Topics("gw-test")
BALANCES = "prepaid/v1/gw-test/meters/+/balance"


def _metered(store: Store, meter_id: str, readings: int) -> list[OutboxRow]:
    """Enrol the meter and commit ``readings`` readings that charge it; its balance rows."""
    state = enrol(meter_id, SETTINGS, NOW, opening_balance=100_000)
    store.add_meter(MeterRecord(meter_id, "bus0", 1, "pe1", b"\x01" * 16, 3), state, NOW)
    balances = []
    for minute in range(readings):
        t = NOW + timedelta(minutes=minute)
        state, commands = step(state, ReadingReceived(meter_id, 100 + minute * 100, t), t)
        balances += [r for r in store.apply(state, commands, t) if r.kind == "balance"]
    return balances


def _acked(store: Store, rows: list[OutboxRow]) -> None:
    store.mark_acked([r.id for r in rows], NOW)


async def _retained_balances(link: MqttLink, broker: Mosquitto) -> dict[str, Received]:
    """What a headend subscribing now gets as retained balances, by meter: a retained
    marker subscribed after them arrives after all of them."""
    marker = "test/rebirth/end"
    await link.publish(marker, b"end", retain=True)
    with TestClient(broker, "headend") as headend:
        headend.subscribe(BALANCES)
        headend.subscribe(marker)
        got: dict[str, Received] = {}
        while (msg := headend.next_message()).topic != marker:
            got[msg.topic.split("/")[4]] = msg
    return got


async def test_each_acknowledged_latest_balance_is_republished_retained_as_first_sent(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    with Store.open(tmp_path / "gw.db") as store:
        current = _metered(store, "m-current", 3)
        _acked(store, current)
        pending = _metered(store, "m-pending", 3)
        assert len(pending) >= 2
        _acked(store, pending[:-1])  # an older balance is acknowledged, the latest is not
        _metered(store, "m-none", 0)
        drained = store.outbox_since_raw("m-current", current[-1].seq, 1)
        rebirth = Rebirth(
            store.latest_balance, lambda: ["m-current", "m-pending", "m-none"], TOPICS
        )
        endpoint = BrokerEndpoint(mosquitto.host, mosquitto.port)
        async with MqttLink(endpoint, client_id="gw-test") as link:
            await rebirth.run(link)
            retained = await _retained_balances(link, mosquitto)
    assert sorted(retained) == ["m-current"]
    (sent,) = drained  # the bytes the drain sends for the latest balance
    assert retained["m-current"].payload == outbox_message("gw-test", sent)
    assert retained["m-current"].retain
    assert rebirth.last is not None
    assert (rebirth.last.meters, rebirth.last.republished) == (3, 1)


async def test_balances_go_at_most_rate_a_second(tmp_path: Path, mosquitto: Mosquitto) -> None:
    meters = [f"m{n}" for n in range(6)]
    rate = 20.0
    with Store.open(tmp_path / "gw.db") as store:
        for meter in meters:
            _acked(store, _metered(store, meter, 2))
        rebirth = Rebirth(store.latest_balance, lambda: meters, TOPICS, rate=rate)
        endpoint = BrokerEndpoint(mosquitto.host, mosquitto.port)
        async with MqttLink(endpoint, client_id="gw-test") as link:
            await rebirth.run(link)
            retained = await _retained_balances(link, mosquitto)
    assert sorted(retained) == meters
    assert rebirth.last is not None
    assert rebirth.last.republished == len(meters)
    # the k-th goes no earlier than k / rate after the start
    assert rebirth.last.seconds >= (len(meters) - 1) / rate


async def test_publish_fresh_makes_its_payload_once_a_window_slot_is_free(
    mosquitto: Mosquitto,
) -> None:
    topic = "prepaid/v1/gw-test/meters/m1/balance"
    current = [b"old"]
    made: list[bytes] = []

    def produce() -> bytes:
        made.append(current[0])
        return current[0]

    with TestClient(mosquitto, "headend") as headend:
        headend.subscribe(topic)
        endpoint = BrokerEndpoint(mosquitto.host, mosquitto.port)
        async with MqttLink(endpoint, client_id="gw-test", max_inflight=2) as link:
            for _ in range(2):
                await link.window.take()  # the window is full: nothing acknowledges these
            fresh = asyncio.create_task(link.publish_fresh(topic, produce, retain=True))
            try:
                await asyncio.sleep(0)  # one turn: it is now waiting for a slot
                assert made == []
                current[0] = b"new"  # written while it waits: what it must send
                link.window.give()
                assert await asyncio.wait_for(fresh, 10) is True
                link.window.give()
            finally:
                fresh.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await fresh
        assert headend.next_message().payload == b"new"
    assert made == [b"new"]


async def test_publish_fresh_sends_nothing_when_there_is_nothing(mosquitto: Mosquitto) -> None:
    topic = "prepaid/v1/gw-test/meters/m1/balance"
    with TestClient(mosquitto, "headend") as headend:
        headend.subscribe(topic)
        endpoint = BrokerEndpoint(mosquitto.host, mosquitto.port)
        async with MqttLink(endpoint, client_id="gw-test") as link:
            assert await link.publish_fresh(topic, lambda: None, retain=True) is False
            assert link.window.used == 0
            await link.publish(topic, b"after")
        assert headend.next_message().payload == b"after"  # nothing came before it
