"""SIGKILL of the gateway at random moments while 50 meters draw power, cross zero and take keypad and MQTT top-ups: every ledger recomputed from the simulator's energy registers, the tariff and the purchases agrees to the minor unit, every token is credited exactly once, and the headend got every message in order without a gap."""

from __future__ import annotations

import asyncio
import json
import queue
import random
import signal
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from examples.headend import Headend
from gateway.store import Store
from meter_sim.clock import ScaledClock
from meter_sim.simulator import Simulator
from tests.integration.helpers import eventually, sim_start
from tests.reliability.harness import (
    Purchases,
    detail,
    env_count,
    feed,
    kill9,
    outbox_depth,
    start_gateway,
)
from tests.support.gateway_env import GatewayWorld, meter_id
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import TestClient

pytestmark = [pytest.mark.asyncio, pytest.mark.broker, pytest.mark.reliability]

SPEED = 60.0
METERS = 50
KILLS = env_count("PREPAID_EDGE_KILLS", 30, 100)
OPENING = 100
#: fast_settings(): 100 minor units per kWh, no standing charge
PRICE_PER_WH = Fraction(100, 1000)
TOPIC = "prepaid/v1/gw-test"


@pytest.mark.timeout(180 + 6 * KILLS)
async def test_crash_torture(tmp_path: Path) -> None:
    rng = random.Random(9)
    folder = tmp_path / "broker"
    folder.mkdir()
    broker = Mosquitto(folder, persistence=True)
    broker.start()
    world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
    units = range(1, METERS + 1)
    world.enrol(units, opening_balance=OPENING)
    purchases = Purchases(world)
    pending_online: dict[str, dict[str, Any]] = {}
    results: dict[str, dict[str, Any]] = {}
    headend = Headend()
    log = tmp_path / "gateway.log"
    start_f, _ = sim_start(SPEED)
    try:
        async with Simulator.start(meters=METERS, seed=9, clock=ScaledClock(SPEED, start_f)) as sim:
            for unit in units:
                sim.set_load(unit, 0)
            baseline = {u: int(sim.state(u)["energy_import_wh"]) for u in units}

            def config() -> Path:
                # Each start begins the gateway's clock at the simulator's time, as a real
                # gateway's wall clock would be after a restart.
                now = datetime.fromtimestamp(sim.clock.now(), UTC)
                return world.write_config(
                    tcp=sim.tcp_address, broker=(broker.host, broker.port), speed=SPEED, start=now
                )

            with TestClient(broker, "headend-torture", persistent=True) as client:
                for kind in ("reading", "balance", "event"):
                    client.subscribe(f"{TOPIC}/meters/+/{kind}")
                client.subscribe(f"{TOPIC}/cmd/result")
                # First run: the gateway reads every meter's baseline while nothing flows.
                proc = start_gateway(config(), log)
                try:
                    await eventually(lambda: _all_read(world), 60, "every meter read once")
                finally:
                    kill9(proc)
                for unit in units:
                    sim.set_load(unit, rng.choice([4000, 6000, 8000]))
                for _ in range(KILLS):
                    proc = start_gateway(config(), log)
                    try:
                        await asyncio.sleep(rng.uniform(0.5, 1.5))
                        _buy(sim, purchases, pending_online, client, rng)
                        await asyncio.sleep(rng.uniform(0.0, 1.0))
                        feed(client, headend, results)
                    finally:
                        kill9(proc)
                # Stop consumption, then one last run that settles everything.
                for unit in units:
                    sim.set_load(unit, 0)
                final_energy = {u: int(sim.state(u)["energy_import_wh"]) for u in units}
                proc = start_gateway(config(), log)
                try:
                    # A headend retries a top-up whose result it never saw (the gateway was
                    # down, or died before answering): a retry is applied once at most.
                    print(f"results before retries: {len(results)} of {len(pending_online)}")
                    await _retry_until_answered(client, headend, pending_online, results)
                    await eventually(
                        lambda: all(not sim.state(u)["keypad_pending"] for u in units),
                        60,
                        "every keypad entry acknowledged",
                    )
                    await eventually(
                        lambda: _registers(world) == final_energy, 60, "final registers read"
                    )
                    await eventually(lambda: outbox_depth(world.store_path) == 0, 60, "drained")
                finally:
                    proc.send_signal(signal.SIGTERM)
                    assert await asyncio.to_thread(proc.wait, 30) == 0, log.read_text()[-3000:]
                await asyncio.to_thread(_settle, client, headend, results)
    finally:
        broker.stop()

    for request, result in results.items():
        assert result["ok"] or result["error"] == "replayed", (request, result)
    crossed = 0
    with Store.open(world.store_path) as store:
        meters = {m.record.meter_id: m for m in store.load_meters()}
        for unit in units:
            mid = meter_id(unit)
            ledger = meters[mid].state.ledger
            made = purchases.made.get(mid, [])
            accepted = [e for e in store.events(mid) if e.get("event") == "token_accepted"]
            counters = sorted(detail(e, "counter") for e in accepted)
            assert counters == sorted(c for c, _, _ in made), f"{mid}: {counters} vs {made}"
            exact = (final_energy[unit] - baseline[unit]) * PRICE_PER_WH
            assert ledger.held_wh == 0, mid
            assert abs(ledger.charged - exact) <= Fraction(1, 2), (mid, ledger.charged, exact)
            assert ledger.balance == OPENING + sum(a for _, a, _ in made) - ledger.charged, mid
            assert ledger.conserved(), mid
            assert store.last_seq(mid) == headend.gateways["gw-test"].meters[mid].highest, mid
            if any(e.get("event") in {"relay_opened", "relay_changed"} for e in store.events(mid)):
                crossed += 1
    summary = headend.gateways["gw-test"]
    assert summary.violations == 0, headend.violation_log[:3]
    # Nothing lost: every gap the headend saw was filled before the end. A gap seen and
    # later filled is a message delivered out of order across a restart (reported).
    assert summary.missing == 0
    assert crossed > 0, "no meter ran out of credit: the torture did not cross zero"
    print(
        f"crash torture: {KILLS} kills, {sum(len(v) for v in purchases.made.values())} purchases"
        f" ({len(pending_online)} online), {crossed} meters crossed zero,"
        f" {summary.messages} messages, 0 lost, 0 doubled, {summary.gaps_seen} gaps seen"
        f" (all filled), {summary.duplicates} duplicate deliveries"
    )


def _buy(
    sim: Simulator,
    purchases: Purchases,
    pending: dict[str, dict[str, Any]],
    client: TestClient,
    rng: random.Random,
) -> None:
    """One keypad and one online purchase on random meters."""
    unit = rng.randint(1, METERS)
    if not sim.state(unit)["keypad_pending"]:
        sim.keypad(unit, purchases.keypad(unit, rng.choice([500, 1000, 2500])))
    unit = rng.randint(1, METERS)
    request, body = purchases.online(unit, rng.choice([500, 1000, 2500]))
    pending[request] = body
    client.publish(_cmd_topic(body), _json(body))


async def _retry_until_answered(
    client: TestClient,
    headend: Headend,
    pending: dict[str, dict[str, Any]],
    results: dict[str, dict[str, Any]],
    within: float = 60.0,
) -> None:
    """Publish every unanswered top-up again every 2 s until each has a result."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        feed(client, headend, results)
        missing = [r for r in pending if r not in results]
        if not missing:
            return
        assert loop.time() < deadline, f"no result for {missing[:5]}"
        for request in missing:
            await asyncio.to_thread(
                client.publish, _cmd_topic(pending[request]), _json(pending[request])
            )
        await asyncio.sleep(2.0)


def _cmd_topic(body: dict[str, Any]) -> str:
    meter = str(body["id"]).split("-", 1)[1].rsplit("-", 1)[0]
    return f"{TOPIC}/meters/{meter}/cmd"


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def _registers(world: GatewayWorld) -> dict[int, int | None]:
    with Store.open(world.store_path) as store:
        return {
            int(m.record.meter_id.split("-")[1]): m.state.ledger.register_wh
            for m in store.load_meters()
        }


def _all_read(world: GatewayWorld) -> bool:
    return all(v is not None for v in _registers(world).values())


def _settle(client: TestClient, headend: Headend, results: dict[str, dict[str, Any]]) -> None:
    """Once the gateway stopped: take what is still on its way, until 2 s of quiet."""
    while True:
        try:
            msg = client.next_message(timeout=2)
        except queue.Empty:
            return
        client.messages.put(msg)
        feed(client, headend, results)
