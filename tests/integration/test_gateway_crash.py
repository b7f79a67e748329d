"""SIGKILL of the gateway process while it polls, charges and takes keypad top-ups loses and doubles nothing: every token is credited exactly once, every ledger adds up, and the headend receives every message of every meter without a gap."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from examples.headend import Headend
from gateway.store import Store
from meter_sim.clock import ScaledClock
from meter_sim.simulator import Simulator
from tests.integration.helpers import eventually, sim_start
from tests.support.gateway_env import GatewayWorld, meter_id
from tests.support.gateway_process import start_gateway
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import TestClient

pytestmark = [pytest.mark.asyncio, pytest.mark.broker, pytest.mark.slow]

SPEED = 60.0
KILLS = 12
METERS = 4


async def test_sigkill_loses_and_doubles_nothing(tmp_path: Path) -> None:
    rng = random.Random(42)
    folder = tmp_path / "broker"
    folder.mkdir()
    broker = Mosquitto(folder, persistence=True)
    broker.start()
    world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
    world.enrol(range(1, METERS + 1), opening_balance=2_000)
    typed: dict[str, list[tuple[int, int]]] = {meter_id(u): [] for u in range(1, METERS + 1)}
    log = tmp_path / "gateway.log"
    start_f, start = sim_start(SPEED)
    headend = Headend()
    try:
        async with Simulator.start(meters=METERS, seed=5, clock=ScaledClock(SPEED, start_f)) as sim:
            for unit in range(1, METERS + 1):
                sim.set_load(unit, 1500 + 500 * unit)
            config = world.write_config(
                tcp=sim.tcp_address, broker=(broker.host, broker.port), speed=SPEED, start=start
            )
            with TestClient(broker, "headend-crash", persistent=True) as client:
                client.subscribe("prepaid/v1/gw-test/meters/+/+")
            for _ in range(KILLS):
                proc = start_gateway(config, log)
                try:
                    await asyncio.sleep(rng.uniform(0.6, 2.0))
                    unit = rng.randint(1, METERS)
                    if sim.state(unit)["keypad_pending"] is False:
                        amount = rng.choice([500, 1000, 2500])
                        token = world.keypad_token(unit, amount)
                        counter = world.counters[meter_id(unit)]
                        sim.keypad(unit, token)
                        typed[meter_id(unit)].append((counter, amount))
                    await asyncio.sleep(rng.uniform(0.0, 1.0))
                finally:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
            # A last run to let everything settle: every entry acknowledged, outbox empty.
            proc = start_gateway(config, log)
            try:
                await eventually(
                    lambda: all(not sim.state(u)["keypad_pending"] for u in range(1, METERS + 1)),
                    30,
                    "every keypad entry acknowledged",
                )
                await eventually(lambda: _depth(world) == 0, 30, "outbox drained")
                await eventually(lambda: _status(config).get("broker") == "connected", 10, "status")
                # The status file says "connected" the moment the broker does; the
                # meters show online at its next write, once each was read.
                await eventually(
                    lambda: _status(config)["health"]["meters_online"] == METERS,
                    15,
                    "every meter online in the status",
                )
                health = _status(config)["health"]
                assert health["meters_total"] == METERS
                assert health["meters_online"] == METERS
            finally:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=20) == 0, log.read_text()[-3000:]
            with TestClient(broker, "headend-crash", persistent=True) as client:
                while True:
                    try:
                        msg = client.next_message(timeout=2)
                    except Exception:  # queue.Empty: everything delivered
                        break
                    headend.handle(msg.topic, msg.payload)
    finally:
        broker.stop()

    with Store.open(world.store_path) as store:
        meters = {m.record.meter_id: m for m in store.load_meters()}
        for meter, tokens in typed.items():
            state = meters[meter].state
            accepted = [e for e in store.events(meter) if e.get("event") == "token_accepted"]
            counters = [int(e["details"]["counter"]) for e in accepted]  # type: ignore[index,call-overload,arg-type]
            assert sorted(counters) == sorted(c for c, _ in tokens), (
                f"{meter}: {counters} vs {tokens}"
            )
            credited = sum(a for _, a in tokens)
            ledger = state.ledger
            assert ledger.balance == 2_000 + credited - ledger.charged, meter
            assert ledger.held_wh == 0, f"{meter}: energy held as implausible after a restart"
            assert store.last_seq(meter) == headend.gateways["gw-test"].meters[meter].highest
    summary = headend.gateways["gw-test"]
    assert summary.violations == 0, headend.violation_log[:3]
    assert summary.gaps_seen == 0
    assert summary.missing == 0


def _depth(world: GatewayWorld) -> int:
    with Store.open(world.store_path) as store:
        return store.outbox_depth()


def _status(config: Path) -> dict[str, Any]:
    """What `meter-gateway status --json` prints about the running gateway."""
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "status", "--json", "--config", str(config)],
        capture_output=True,
        check=False,
        text=True,
    )
    return json.loads(out.stdout) if out.returncode == 0 else {}
