"""A broker outage with 200 meters reporting: the gateway keeps polling and charging, the messages wait in the store's outbox (on disk: memory stays flat while the outbox grows), and after the broker comes back the headend receives everything in order without a gap."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from examples.headend import Headend
from gateway.config import GatewayConfig
from meter_sim.clock import ScaledClock
from meter_sim.simulator import Simulator
from tests.integration.helpers import eventually, running_gateway, sim_start
from tests.support.gateway_env import GatewayWorld
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import TestClient

pytestmark = [pytest.mark.asyncio, pytest.mark.reliability, pytest.mark.broker]

SPEED = 60.0
METERS = 200
OUTAGE_S = float(os.environ.get("PREPAID_EDGE_OUTAGE_SECONDS", "15"))
#: how much the whole test process (gateway, simulator, broker clients) may grow while
#: thousands of messages wait: they must be on disk, not in RAM
RSS_BOUND_KB = 30_000


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_outage_with_200_meters_keeps_memory_flat_and_loses_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "broker"
    folder.mkdir()
    broker = Mosquitto(folder, persistence=True)
    broker.start()
    world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
    world.enrol(range(1, METERS + 1), opening_balance=1_000_000)
    headend = Headend()
    start_f, start = sim_start(SPEED)
    try:
        async with Simulator.start(meters=METERS, seed=9, clock=ScaledClock(SPEED, start_f)) as sim:
            data = world.config_data(
                tcp=sim.tcp_address,
                broker=(broker.host, broker.port),
                speed=SPEED,
                start=start,
                interval=2.0,
            )
            # The headend gets back to the broker before the gateway does.
            data["mqtt"].update(reconnect_min_s=2.0, reconnect_max_s=3.0)
            data["polling"].update(min_interval_s=2.0, max_interval_s=2.0)
            with TestClient(broker, "headend-outage", persistent=True) as client:
                client.subscribe("prepaid/v1/gw-test/meters/+/+")
            async with running_gateway(GatewayConfig.model_validate(data)) as runner:
                gw = runner.gateway
                await asyncio.wait_for(runner.mqtt_ready.wait(), 10)
                await eventually(
                    lambda: gw.store.outbox_depth() == 0 and runner.drain.published > METERS,
                    30,
                    "steady state",
                )
                broker.stop()
                depth_before, rss_before = gw.store.outbox_depth(), _rss_kb()
                await asyncio.sleep(OUTAGE_S)  # the outage itself: a span of time, nothing to await
                depth_after, rss_after = gw.store.outbox_depth(), _rss_kb()
                broker.start()
                with TestClient(broker, "headend-outage", persistent=True) as client:
                    await eventually(lambda: gw.store.outbox_depth() == 0, 60, "outbox drained")
                    total = runner.drain.published
                    received = 0
                    while received < total:
                        msg = client.next_message(timeout=10)
                        headend.handle(msg.topic, msg.payload)
                        received += 1
    finally:
        broker.stop()
    grown = depth_after - depth_before
    print(
        f"outage {OUTAGE_S:.0f} s, {METERS} meters: outbox grew by {grown} rows on disk, "
        f"RSS {rss_before} -> {rss_after} kB"
    )
    assert grown > 1000
    assert rss_after - rss_before < RSS_BOUND_KB
    summary = headend.gateways["gw-test"]
    assert summary.violations == 0, headend.violation_log[:3]
    assert summary.gaps_seen == 0
    assert summary.missing == 0
    assert len(summary.meters) == METERS
