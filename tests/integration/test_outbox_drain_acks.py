"""The outbox drain over a real Mosquitto hands its PUBACKs to the store, which batches their writes: every row leaves the pending set, stamped with the drain's clock, and reaches the file with the store's next commit."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
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
from gateway.store import MeterRecord, MeterUpdate, Store
from gateway.store import acks as acks_module
from gateway.sync import OutboxDrain
from protocol.mqtt import Topics
from tests.integration.helpers import eventually
from tests.support.mosquitto import Mosquitto

pytestmark = [pytest.mark.broker, pytest.mark.asyncio]

NOW = datetime(2026, 11, 2, 12, tzinfo=UTC)
SETTINGS = MeterSettings(TariffSchedule.single(Tariff("GBP", FlatPricing(Decimal(100)))))


def acked_in_file(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        (count,) = db.execute("SELECT count(*) FROM outbox WHERE acked_at IS NOT NULL").fetchone()
        return int(count)
    finally:
        db.close()


async def test_acks_reach_the_store_at_once_and_the_file_with_the_next_commit(
    mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(acks_module, "ACK_FLUSH_S", 3600.0)  # only a commit writes them
    path = tmp_path / "gw.db"
    with Store.open(path) as store:
        state = enrol("m1", SETTINGS, NOW, opening_balance=10_000)
        store.add_meter(MeterRecord("m1", "bus0", 1, "pe1", b"\x01" * 16), state, NOW)
        for n in range(1, 101):
            at = NOW + timedelta(minutes=n)
            state, commands = step(state, ReadingReceived("m1", 100 * n, at), at)
            store.commit_cycle([MeterUpdate(state, commands, at)])
        sent = store.outbox_depth()
        assert sent > 100
        drain = OutboxDrain(store, Topics("gw-test"), clock=lambda: NOW + timedelta(hours=1))
        endpoint = BrokerEndpoint(mosquitto.host, mosquitto.port)
        async with MqttLink(endpoint, client_id="gw-test") as link:
            task = asyncio.create_task(drain.run(link), name="drain-under-test")
            try:
                await eventually(lambda: store.outbox_depth() == 0, what="every row acknowledged")
                assert drain.published == sent
                assert drain.last_sync == NOW + timedelta(hours=1)
                assert acked_in_file(path) == 0
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        at = NOW + timedelta(minutes=101)
        state, commands = step(state, ReadingReceived("m1", 100 * 101, at), at)
        store.commit_cycle([MeterUpdate(state, commands, at)])
        assert acked_in_file(path) == sent
        assert store.outbox_since("m1", 1)[0].acked_at == NOW + timedelta(hours=1)
