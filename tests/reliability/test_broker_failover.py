"""Two brokers configured, the first SIGKILLed (persistence on) while 50 meters report: the gateway moves to the second within a bounded time, the reference headend sees the gap left by what the dead broker had acknowledged, and `resend` commands recover every message: nothing lost."""

from __future__ import annotations

import asyncio
import json
import queue
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from examples.headend import Headend
from gateway.store import Store
from meter_sim.clock import ScaledClock
from meter_sim.simulator import Simulator
from tests.integration.helpers import eventually, running_gateway, sim_start
from tests.reliability.harness import feed
from tests.support.gateway_env import GatewayWorld, meter_id
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import TestClient

pytestmark = [pytest.mark.asyncio, pytest.mark.broker, pytest.mark.reliability]

SPEED = 60.0
METERS = 50
FAILOVER_BOUND_S = 10.0
ROOT = "prepaid/v1/gw-test"


async def test_failover_and_resend_recover_everything(tmp_path: Path) -> None:
    brokers = []
    for name in ("b1", "b2"):
        (tmp_path / name).mkdir()
        broker = Mosquitto(tmp_path / name, persistence=True)
        broker.start()
        brokers.append(broker)
    first, second = brokers
    world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
    units = range(1, METERS + 1)
    world.enrol(units, opening_balance=100_000)
    headend = Headend()
    results: dict[str, dict[str, object]] = {}
    start_f, _ = sim_start(SPEED)
    try:
        async with Simulator.start(meters=METERS, seed=4, clock=ScaledClock(SPEED, start_f)) as sim:
            for unit in units:
                sim.set_load(unit, 3000)
            config = world.config(
                tcp=sim.tcp_address,
                broker=[(b.host, b.port) for b in brokers],
                speed=SPEED,
                start=datetime.fromtimestamp(sim.clock.now(), UTC),
            )
            c1 = TestClient(first, "headend-1", persistent=True)
            c1.connect()
            with TestClient(second, "headend-2") as c2:
                for client in (c1, c2):
                    for kind in ("reading", "balance", "event"):
                        client.subscribe(f"{ROOT}/meters/+/{kind}")
                    client.subscribe(f"{ROOT}/cmd/result")
                async with running_gateway(config) as runner:
                    await eventually(
                        lambda: (
                            feed(c1, headend, results) >= 0
                            and headend.gateways.get("gw-test")
                            and headend.gateways["gw-test"].messages > 200
                        ),
                        30,
                        "traffic",
                    )
                    # The headend drops off the first broker, which queues for its
                    # persistent session and acknowledges the gateway; then the broker
                    # dies before saving: what it acknowledged is gone.
                    c1.close()
                    feed(c1, headend, results)
                    store = runner.gateway.store
                    m1, before = meter_id(1), store.last_seq(meter_id(1))
                    await eventually(
                        lambda: (
                            sum(r.acked_at is not None for r in store.outbox_since(m1, before + 1))
                            >= 3
                        ),
                        30,
                        "messages acknowledged by the first broker and never delivered",
                    )
                    killed = time.monotonic()
                    first.kill()
                    at_kill = {m: s.highest for m, s in headend.gateways["gw-test"].meters.items()}
                    await eventually(
                        lambda: feed(c2, headend, results) > 0, 30, "traffic on the second"
                    )
                    failover_s = time.monotonic() - killed
                    resends = 0
                    deadline = time.monotonic() + 60
                    while True:
                        feed(c2, headend, results)
                        resends += _request_resends(c2, headend)
                        if _complete(headend, at_kill, units):
                            break
                        assert time.monotonic() < deadline, _missing(headend)
                        await asyncio.sleep(0.5)
                    store_path = runner.config.store
                await asyncio.to_thread(_drain_until_quiet, c2, headend, results)
    finally:
        for broker in brokers:
            broker.stop()
    with Store.open(store_path) as store:
        for unit in units:
            mid = meter_id(unit)
            highest = headend.gateways["gw-test"].meters[mid].highest
            # Whatever the headend has not got was never acknowledged: still to be sent.
            unsent = store.outbox_since(mid, highest + 1)
            assert all(row.acked_at is None for row in unsent), (mid, highest)
    summary = headend.gateways["gw-test"]
    assert summary.violations == 0, headend.violation_log[:3]
    assert summary.missing == 0
    assert failover_s < FAILOVER_BOUND_S
    assert summary.gaps_seen > 0, "the broker crash lost nothing: the resend path was not tested"
    print(
        f"failover: {failover_s:.2f} s to the second broker; {summary.gaps_seen} gaps seen,"
        f" {resends} resend requests, {summary.messages} messages, 0 lost"
    )


def _request_resends(client: TestClient, headend: Headend) -> int:
    with headend.lock:
        pending, headend.gap_requests = headend.gap_requests, []
    for _gateway, meter, from_seq in pending:
        body: dict[str, object] = {
            "v": 1,
            "id": f"rs-{meter}-{from_seq}",
            "cmd": "resend",
            "meter": meter,
        }
        body["from_seq"] = from_seq
        client.publish(f"{ROOT}/meters/{meter}/cmd", json.dumps(body).encode())
    return len(pending)


def _complete(headend: Headend, at_kill: dict[str, int], units: range) -> bool:
    """No gap left, and every meter has reported through the second broker."""
    gw = headend.gateways["gw-test"]
    return gw.missing == 0 and all(
        gw.meters[meter_id(u)].highest > at_kill.get(meter_id(u), 0) for u in units
    )


def _drain_until_quiet(
    client: TestClient, headend: Headend, results: dict[str, dict[str, object]]
) -> None:
    while True:
        try:
            msg = client.next_message(timeout=1)
        except queue.Empty:
            return
        client.messages.put(msg)
        feed(client, headend, results)


def _missing(headend: Headend) -> dict[str, list[int]]:
    gw = headend.gateways["gw-test"]
    return {m: sorted(s.missing)[:5] for m, s in gw.meters.items() if s.missing}
