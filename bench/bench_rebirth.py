"""Rebirth at 10,000 meters: how long a new session takes to republish every meter's latest
balance (retained), and what it costs the live outbox drain running beside it.

Run on purpose: ``.venv/bin/python bench/bench_rebirth.py [--meters 10000] [--live 20000]``.
A real Mosquitto on loopback; the store holds one acknowledged balance per meter and
``--live`` unacknowledged readings for the drain. Three runs in the same process: the
drain alone (the baseline), the rebirth alone, both at once. Then a fresh subscriber
counts the retained balances the broker holds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.core.commands import Publish  # noqa: E402
from gateway.core.meter_state import enrol  # noqa: E402
from gateway.core.settings import MeterSettings  # noqa: E402
from gateway.core.tariff import FlatPricing, Tariff, TariffSchedule  # noqa: E402
from gateway.mqtt_link import BrokerEndpoint, MqttLink  # noqa: E402
from gateway.rebirth import RATE, Rebirth  # noqa: E402
from gateway.store import MeterRecord, MeterUpdate, Store  # noqa: E402
from gateway.sync import OutboxDrain  # noqa: E402
from protocol.mqtt import Topics  # noqa: E402
from tests.support.mosquitto import Mosquitto  # noqa: E402

GW = "gw-bench"


def build_store(path: Path, meters: int) -> list[str]:
    """``meters`` meters, each with one acknowledged balance row."""
    now = datetime.now(UTC)
    settings = MeterSettings(TariffSchedule.single(Tariff("KES", FlatPricing(Decimal(25)))))
    ids = [f"PE1-{n:06d}" for n in range(1, meters + 1)]
    with Store.open(path) as store:
        states = []
        for n, mid in enumerate(ids):
            state = enrol(mid, settings, now, opening_balance=100_000)
            store.add_meter(MeterRecord(mid, "bus", n % 247 + 1, "pe1", b"k" * 16), state, now)
            states.append(state)
        rows = store.commit_cycle(
            [
                MeterUpdate(
                    s,
                    [Publish(s.meter_id, "balance", balance_body(s.meter_id))],
                    now,
                )
                for s in states
            ]
        )
        store.mark_acked([r.id for r in rows], now)
    return ids


def balance_body(meter_id: str) -> dict[str, Any]:
    return {
        "kind": "balance",
        "balance": 100_000,
        "debt": 0,
        "currency": "KES",
        "credit_state": "normal",
        "relay": "closed",
        "meter": meter_id,
    }


def add_live(store: Store, ids: list[str], n: int) -> None:
    """``n`` unacknowledged readings for the drain."""
    now = datetime.now(UTC)
    states = {m.state.meter_id: m.state for m in store.load_meters()}
    updates = []
    for i in range(n):
        st = states[ids[i % len(ids)]]
        body: dict[str, Any] = {
            "kind": "reading",
            "energy_wh": i,
            "power_w": 812,
            "balance": 100_000,
        }
        updates.append(MeterUpdate(st, [Publish(st.meter_id, "reading", body)], now))
    store.commit_cycle(updates)


async def one_run(
    store: Store, port: int, ids: list[str], *, drain: bool, rebirth: bool, rate: float
) -> dict[str, float]:
    topics = Topics(GW)
    out: dict[str, float] = {}
    endpoint = BrokerEndpoint("127.0.0.1", port, None)
    async with MqttLink(endpoint, client_id=f"{GW}-{drain}-{rebirth}", max_inflight=64) as link:
        tasks: list[asyncio.Task[None]] = []
        started = time.monotonic()
        d = OutboxDrain(store, topics, clock=lambda: datetime.now(UTC))
        if drain:
            tasks.append(asyncio.create_task(d.run(link)))
        r = Rebirth(store.latest_balance, lambda: ids, topics, rate=rate)
        if rebirth:
            rebirth_task = asyncio.create_task(r.run(link))
        if drain:
            while store.outbox_depth() > 0:  # noqa: ASYNC110 (a row count in SQLite)
                await asyncio.sleep(0.02)
            out["drain_s"] = time.monotonic() - started
            out["drained"] = d.published
        if rebirth:
            await rebirth_task
            assert r.last is not None
            out["rebirth_s"] = r.last.seconds
            out["republished"] = r.last.republished
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return out


def retained_count(port: int, seconds: float = 3.0) -> int:
    """Retained balances a new subscriber gets from the broker."""
    got: set[str] = set()
    lock = threading.Lock()

    def on_message(_c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        if msg.retain:
            with lock:
                got.add(msg.topic)

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-rebirth-reader")
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe(f"prepaid/v1/{GW}/meters/+/balance", qos=1)
    client.loop_start()
    time.sleep(seconds)
    client.loop_stop()
    client.disconnect()
    return len(got)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meters", type=int, default=10_000)
    ap.add_argument("--live", type=int, default=20_000)
    ap.add_argument("--rate", type=float, default=RATE, help="rebirth pace (default %(default)s/s)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print(f"building a store of {a.meters:,} meters ...", flush=True)
        ids = build_store(work / "gw.db", a.meters)
        (work / "broker").mkdir()
        mosq = Mosquitto(work / "broker")
        mosq.start()
        try:
            with Store.open(work / "gw.db") as store:
                add_live(store, ids, a.live)
                alone = asyncio.run(
                    one_run(store, mosq.port, ids, drain=True, rebirth=False, rate=a.rate)
                )
                reborn = asyncio.run(
                    one_run(store, mosq.port, ids, drain=False, rebirth=True, rate=a.rate)
                )
                add_live(store, ids, a.live)
                both = asyncio.run(
                    one_run(store, mosq.port, ids, drain=True, rebirth=True, rate=a.rate)
                )
            held = retained_count(mosq.port)
        finally:
            mosq.stop()
    load = os.getloadavg()
    rate_alone = alone["drained"] / alone["drain_s"]
    rate_both = both["drained"] / both["drain_s"]
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(
        f"drain alone:            {a.live:,} readings in {alone['drain_s']:.2f} s"
        f" = {rate_alone:,.0f} msg/s (baseline)"
    )
    print(
        f"rebirth alone:          {int(reborn['republished']):,} balances in"
        f" {reborn['rebirth_s']:.2f} s = {reborn['republished'] / reborn['rebirth_s']:,.0f}/s"
    )
    print(
        f"drain beside a rebirth: {a.live:,} readings in {both['drain_s']:.2f} s"
        f" = {rate_both:,.0f} msg/s ({rate_both / rate_alone:.2f}x the baseline);"
        f" the rebirth took {both['rebirth_s']:.2f} s"
    )
    print(f"retained balances on the broker: {held:,} of {a.meters:,}")


if __name__ == "__main__":
    main()
