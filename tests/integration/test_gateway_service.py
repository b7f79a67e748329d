"""The whole gateway against the real simulator and a real Mosquitto: cut-off on exhausted credit, keypad and online top-ups reconnect, replays are refused on both channels, a silent meter is reported and never cut off, bypass is detected, and a broker outage loses nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from examples.headend import Headend, HeadendClient
from gateway.config import GatewayConfig
from gateway.core.meter_state import enrol
from gateway.core.states import CreditState
from gateway.measured import reading_fields
from gateway.store import MeterRecord, Store
from meter_sim.clock import ScaledClock
from meter_sim.simulator import Simulator
from protocol.command_auth import sign_command
from protocol.regmap import load_map
from protocol.tokens.keys import derive_meter_key
from tests.integration.helpers import MessageLog, eventually, running_gateway, sim_start
from tests.support.gateway_env import (
    HEADEND_KEY,
    ONLINE_KEY,
    VENDING_KEY,
    GatewayWorld,
    fast_settings,
    meter_id,
    online_token,
)
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import TestClient

pytestmark = [pytest.mark.asyncio, pytest.mark.broker]

SPEED = 60.0
M1, M2 = meter_id(1), meter_id(2)


@dataclass
class Site:
    world: GatewayWorld
    sim: Simulator
    broker: Mosquitto
    headend: TestClient
    log: MessageLog


@pytest_asyncio.fixture
async def site(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[Site]:
    start_f, _ = sim_start(SPEED)
    async with Simulator.start(meters=2, seed=7, clock=ScaledClock(SPEED, start_f)) as sim:
        world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
        with TestClient(mosquitto, "headend-test") as headend:
            headend.subscribe("prepaid/v1/gw-test/#")
            yield Site(world, sim, mosquitto, headend, MessageLog(headend))


def _config(site: Site, **kw: Any) -> GatewayConfig:
    _, start = sim_start(SPEED)
    return site.world.config(
        tcp=site.sim.tcp_address,
        broker=(site.broker.host, site.broker.port),
        speed=SPEED,
        start=start,
        **kw,
    )


async def test_cutoff_keypad_reconnect_and_keypad_replay(site: Site) -> None:
    # Meter 1 draws 6 kW at 60x: 100 Wh (10.00 KES at 100/kWh... here 10 minor units)
    # per real second; 150 minor units of credit run out in about 15 s of real time.
    site.world.enrol([1], opening_balance=150)
    site.world.enrol([2], opening_balance=1_000_000)
    site.sim.set_load(1, 6000)
    site.sim.set_load(2, 300)
    async with running_gateway(_config(site)) as runner:
        gw = runner.gateway
        await eventually(lambda: site.sim.state(1)["relay_closed"] is False, 40, "cut-off")
        assert gw.meters[M1].state.credit is CreditState.DISCONNECTED
        assert site.sim.state(2)["relay_closed"] is True
        opened = await eventually(
            lambda: site.log.events(M1, "relay_opened") or site.log.events(M1, "relay_changed"),
            10,
            "relay event",
        )
        assert opened

        token = site.world.keypad_token(1, 5000)
        seq = site.sim.keypad(1, token)
        await eventually(lambda: site.sim.state(1)["relay_closed"] is True, 20, "reconnect")
        await eventually(lambda: site.sim.state(1)["keypad_ack"] == seq, 10, "keypad ack")
        balance = gw.meters[M1].state.ledger.balance
        assert balance > 4000
        # The credit is on the meter's display (holding registers 2-3, i32 high word first).
        await eventually(
            lambda: _display_credit(site.sim, 1) == gw.meters[M1].state.ledger.balance,
            10,
            "credit on the display",
        )
        accepted = await eventually(
            lambda: site.log.events(M1, "token_accepted"), 10, "accepted event"
        )
        assert accepted[0]["details"]["channel"] == "keypad"

        # The same digits again: refused as a replay, no money moves.
        before = gw.meters[M1].state.ledger.balance
        seq2 = site.sim.keypad(1, token)
        await eventually(lambda: site.sim.state(1)["keypad_ack"] == seq2, 10, "replay ack")
        rejected = await eventually(
            lambda: site.log.events(M1, "token_rejected"), 10, "rejected event"
        )
        assert rejected[-1]["reason"] == "replayed"
        assert gw.meters[M1].state.ledger.balance <= before


def _display_credit(sim: Simulator, unit: int) -> int | None:
    written = sim.state(unit)["holding_written"]
    if "2" not in written or "3" not in written:
        return None
    raw = int(written["2"]) << 16 | int(written["3"])
    return raw - (1 << 32) if raw >= 1 << 31 else raw


async def test_online_topup_reconnects_and_replay_is_refused(site: Site) -> None:
    site.world.enrol([1], opening_balance=60)
    site.world.enrol([2], opening_balance=1_000_000)
    site.sim.set_load(1, 6000)
    async with running_gateway(_config(site)) as runner:
        gw = runner.gateway
        await eventually(lambda: site.sim.state(1)["relay_closed"] is False, 40, "cut-off")
        await asyncio.wait_for(runner.mqtt_ready.wait(), 10)
        token = online_token(1, 1, 8000)
        cmd = {"v": 1, "id": "topup-1", "cmd": "topup", "token": token}
        site.headend.publish(f"prepaid/v1/gw-test/meters/{M1}/cmd", json.dumps(cmd).encode())
        await eventually(lambda: site.sim.state(1)["relay_closed"] is True, 20, "reconnect")
        results = await eventually(
            lambda: [m for t, m in site.log.pull() if t.endswith("cmd/result")], 10, "result"
        )
        assert results[0]["ok"] is True
        assert results[0]["id"] == "topup-1"
        # The credit is on the meter's display and on the retained balance topic.
        balance = gw.meters[M1].state.ledger.balance
        assert balance > 7000
        # The credit reaches the headend on the (retained) balance topic.
        await eventually(
            lambda: any(b["balance"] > 7000 for b in site.log.of(M1, "balance")),
            10,
            "balance message with the credit",
        )
        await eventually(
            lambda: _display_credit(site.sim, 1) == gw.meters[M1].state.ledger.balance,
            10,
            "credit on the display",
        )

        # The same purchase again, and the same counter typed on the keypad: both refused.
        cmd["id"] = "topup-2"
        site.headend.publish(f"prepaid/v1/gw-test/meters/{M1}/cmd", json.dumps(cmd).encode())
        results = await eventually(
            lambda: [
                m for t, m in site.log.pull() if t.endswith("cmd/result") and m["id"] == "topup-2"
            ],
            10,
            "second result",
        )
        assert results[0]["ok"] is False
        assert results[0]["error"] == "replayed"
        seq = site.sim.keypad(1, site.world.keypad_token(1, 8000, counter=1))
        await eventually(lambda: site.sim.state(1)["keypad_ack"] == seq, 10, "keypad ack")
        rejected = site.log.events(M1, "token_rejected")
        assert [e["reason"] for e in rejected][-1] == "replayed"
        assert gw.meters[M1].state.ledger.balance <= balance


async def test_silent_meter_is_reported_and_never_disconnected(site: Site) -> None:
    site.world.enrol([1, 2], opening_balance=1_000_000)
    site.sim.inject_fault(1, "timeout")
    async with running_gateway(_config(site, timeout=0.2)) as runner:
        gw = runner.gateway
        lost = await eventually(lambda: site.log.events(M1, "communication_lost"), 20, "comm lost")
        assert lost
        assert gw.meters[M1].state.comm_ok is False
        assert gw.meters[M1].state.relay_closed
        assert site.sim.state(1)["relay_closed"] is True
        # The healthy neighbour keeps being read.
        readings_before = len(site.log.of(M2, "reading"))
        await eventually(
            lambda: len(site.log.of(M2, "reading")) > readings_before + 3, 10, "readings"
        )
        site.sim.clear_faults(1)
        await eventually(lambda: site.log.events(M1, "communication_restored"), 20, "restored")


async def test_bypass_consumption_with_relay_open_is_detected_and_charged(site: Site) -> None:
    site.world.enrol([1], opening_balance=50)
    site.world.enrol([2], opening_balance=1_000_000)
    site.sim.set_load(1, 6000)
    async with running_gateway(_config(site)) as runner:
        gw = runner.gateway
        await eventually(lambda: site.sim.state(1)["relay_closed"] is False, 40, "cut-off")
        charged_before = gw.meters[M1].state.ledger.charged
        site.sim.set_tamper(1, "bypass", True)
        tamper = await eventually(
            lambda: [e for e in site.log.events(M1, "tamper") if "bypass" in e["reason"]],
            20,
            "bypass tamper event",
        )
        assert tamper[0]["details"]["energy_wh"] > 0
        assert gw.meters[M1].state.ledger.charged > charged_before


async def test_broker_outage_loses_nothing_and_keeps_order(tmp_path: Path) -> None:
    """The broker (with persistence, as in production) goes down and comes back; the
    headend's persistent session then holds everything, in order, without a gap."""
    folder = tmp_path / "broker"
    folder.mkdir()
    broker = Mosquitto(folder, persistence=True)
    broker.start()
    world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
    world.enrol([1, 2], opening_balance=1_000_000)
    headend = Headend()
    start_f, _ = sim_start(SPEED)
    try:
        async with Simulator.start(meters=2, seed=7, clock=ScaledClock(SPEED, start_f)) as sim:
            _, start = sim_start(SPEED)
            config = world.config(
                tcp=sim.tcp_address, broker=(broker.host, broker.port), speed=SPEED, start=start
            )
            with TestClient(broker, "headend-p", persistent=True) as client:
                client.subscribe("prepaid/v1/gw-test/meters/+/+")
            async with running_gateway(config) as runner:
                gw = runner.gateway
                await eventually(lambda: runner.drain.published >= 6, 10, "first messages")
                broker.stop()
                steps = gw.counters.steps
                await eventually(lambda: gw.counters.steps > steps + 20, 20, "outage work")
                assert gw.store.outbox_depth() > 10
                broker.start()
                await eventually(lambda: gw.store.outbox_depth() == 0, 30, "outbox drained")
                total = runner.drain.published
            with TestClient(broker, "headend-p", persistent=True) as client:
                received = 0
                while received < total:
                    msg = client.next_message(timeout=5)
                    headend.handle(msg.topic, msg.payload)
                    received += 1
    finally:
        broker.stop()
    summary = headend.gateways["gw-test"]
    assert summary.violations == 0, headend.violation_log[:3]
    assert summary.gaps_seen == 0
    assert summary.missing == 0
    for meter in (M1, M2):
        assert summary.meters[meter].highest == world_last_seq(tmp_path, meter)


def world_last_seq(tmp_path: Path, meter: str) -> int:
    with Store.open(tmp_path / "gateway.db") as store:
        return store.last_seq(meter)


def _signed(cmd: dict[str, Any], *, expires: datetime, key: Any = None) -> dict[str, Any]:
    body = cmd | {"expires": expires.isoformat()}
    return sign_command(body, "hq-1", key or HEADEND_KEY)


async def test_remote_commands_need_a_valid_signature_and_answer_every_request(
    site: Site,
) -> None:
    site.world.enrol([1, 2], opening_balance=1_000_000)
    async with running_gateway(_config(site)) as runner:
        gw = runner.gateway
        await asyncio.wait_for(runner.mqtt_ready.wait(), 10)
        topic = f"prepaid/v1/gw-test/meters/{M1}/cmd"
        # The gateway clock runs 60x: expiry is judged on gateway time.
        soon = gw.clock() + timedelta(minutes=30)
        base = {"v": 1, "cmd": "disconnect", "meter": M1, "gateway": "gw-test", "reason": "test"}
        cases = {
            "unsigned": base
            | {"id": "c-unsigned", "key_id": "hq-1", "expires": soon.isoformat(), "sig": "AAAA"},
            "stale": _signed(base | {"id": "c-stale"}, expires=gw.clock() - timedelta(minutes=1)),
            "forged": _signed(base | {"id": "c-forged"}, expires=soon, key=ONLINE_KEY),
            "malformed": {"v": 1, "id": "c-bad", "cmd": "disconnect"},
        }
        for body in cases.values():
            site.headend.publish(topic, json.dumps(body).encode())
        site.headend.publish(topic, b"{not json")
        site.headend.publish(topic, b"x" * 20_000)

        def results() -> list[dict[str, Any]]:
            return [m for t, m in site.log.pull() if t.endswith("cmd/result")]

        got = await eventually(lambda: len(results()) >= 6 and results(), 10, "six results")
        by_id = {r["id"]: r for r in got}
        assert by_id["c-unsigned"]["error"] == "bad_signature"
        assert by_id["c-stale"]["error"] == "expired"
        assert by_id["c-forged"]["error"] == "bad_signature"
        assert by_id["c-bad"]["error"] == "malformed"
        errors = sorted(r["error"] for r in got if r["id"] is None)
        assert errors == ["malformed", "too_large"]
        assert all(not r["ok"] for r in got)
        assert site.sim.state(1)["relay_closed"] is True
        assert gw.meters[M1].state.relay_closed

        # A good one switches the supply off; replaying it is refused.
        good = _signed(base | {"id": "c-good", "correlation": "corr-7"}, expires=soon)
        site.headend.publish(topic, json.dumps(good).encode())
        await eventually(lambda: site.sim.state(1)["relay_closed"] is False, 10, "remote cut")
        site.headend.publish(topic, json.dumps(good).encode())
        replies = await eventually(
            lambda: (
                [r for r in results() if r["id"] == "c-good"][1:]
                and [r for r in results() if r["id"] == "c-good"]
            ),
            10,
            "two answers",
        )
        assert replies[0]["ok"] is True
        assert replies[0]["correlation"] == "corr-7"
        assert replies[1]["error"] == "replayed_command"
        assert site.sim.state(2)["relay_closed"] is True


async def test_resend_command_republishes_a_meters_messages(site: Site) -> None:
    site.world.enrol([1], opening_balance=1_000_000)
    async with running_gateway(_config(site)) as runner:
        gw = runner.gateway
        await asyncio.wait_for(runner.mqtt_ready.wait(), 10)
        await eventually(lambda: gw.store.last_seq(M1) >= 4, 10, "some messages")

        def delivered() -> dict[int, dict[str, Any]]:
            found = site.log.pull()
            return {m["seq"]: m for t, m in found if f"/meters/{M1}/" in t and m.get("seq")}

        def first_four() -> dict[int, dict[str, Any]] | None:
            found = delivered()
            return found if set(range(1, 5)) <= found.keys() else None

        first = await eventually(first_four, 10, "first deliveries")
        site.log.items.clear()
        cmd = {"v": 1, "id": "r-1", "cmd": "resend", "meter": M1, "from_seq": 1}
        site.headend.publish(f"prepaid/v1/gw-test/meters/{M1}/cmd", json.dumps(cmd).encode())
        result = await eventually(
            lambda: [m for t, m in site.log.pull() if t.endswith("cmd/result")], 10, "result"
        )
        assert result[0]["ok"] is True
        resent = result[0]["details"]["resent"]
        assert resent >= 4
        assert result[0]["details"]["next_seq"] is None  # all of them, in one request

        def seqs() -> set[int]:
            items = site.log.pull()
            return {m["seq"] for t, m in items if "/meters/" in t and m.get("seq") is not None}

        # Resends follow the result, in the background.
        await eventually(lambda: set(range(1, resent + 1)) <= seqs(), 10, "the resent messages")
        again = delivered()
        # A resent message is the message itself: the same envelope, time and body.
        assert all(again[seq] == first[seq] for seq in range(1, 5)), (again, first)


async def test_relay_that_does_not_follow_the_command_raises_a_relay_fault(site: Site) -> None:
    site.world.enrol([1], opening_balance=50)
    site.world.enrol([2], opening_balance=1_000_000)
    site.sim.set_load(1, 6000)
    site.sim.inject_fault(1, "relay_stuck")
    async with running_gateway(_config(site)) as runner:
        gw = runner.gateway
        mismatch = await eventually(
            lambda: site.log.events(M1, "relay_mismatch"), 40, "relay fault event"
        )
        assert mismatch[0]["details"]["desired_closed"] is False
        assert mismatch[0]["details"]["observed_closed"] is True
        await eventually(lambda: gw.counters.relay_faults >= 1, 10, "relay fault counted")
        assert len(site.log.events(M1, "relay_mismatch")) == 1  # once, not at every reading
        site.sim.clear_faults(1)
        await eventually(lambda: site.sim.state(1)["relay_closed"] is False, 30, "cut at last")


async def test_mqtt_311_gateway_answers_on_the_fallback_topic(site: Site) -> None:
    site.world.enrol([1], opening_balance=1_000_000)
    config = _config(site)
    config = config.model_copy(
        update={"mqtt": config.mqtt.model_copy(update={"protocol": "3.1.1"})}
    )
    async with running_gateway(config) as runner:
        await asyncio.wait_for(runner.mqtt_ready.wait(), 10)
        cmd = {"v": 1, "id": "rr-1", "cmd": "reread", "meter": M1, "correlation": "abc"}
        site.headend.publish(f"prepaid/v1/gw-test/meters/{M1}/cmd", json.dumps(cmd).encode())
        results = await eventually(
            lambda: [m for t, m in site.log.pull() if t == "prepaid/v1/gw-test/cmd/result"],
            10,
            "result on the fallback topic",
        )
        assert results[0]["ok"] is True
        assert results[0]["correlation"] == "abc"
        assert await eventually(lambda: site.log.of(M1, "reading"), 10, "readings over 3.1.1")


async def test_home_assistant_discovery_is_published_retained(site: Site) -> None:
    site.world.enrol([1, 2], opening_balance=1_000_000)
    config = _config(site, extra={"home_assistant": {"enabled": True}})
    async with running_gateway(config) as runner:
        await asyncio.wait_for(runner.mqtt_ready.wait(), 10)
    with TestClient(site.broker, "hass") as hass:
        hass.subscribe("homeassistant/#")
        configs: dict[str, Any] = {}
        # per meter: energy, power, balance, supply, and a sensor per measured field
        per_meter = 4 + len(reading_fields(load_map("pe1")))
        while len(configs) < 2 * per_meter:
            msg = hass.next_message(timeout=5)
            assert msg.retain
            configs[msg.topic] = json.loads(msg.payload)
    energy = [c for t, c in configs.items() if t.endswith("_energy/config")]
    assert sorted(c["state_topic"] for c in energy) == [
        f"prepaid/v1/gw-test/meters/{M1}/reading",
        f"prepaid/v1/gw-test/meters/{M2}/reading",
    ]
    current = [c for t, c in configs.items() if t.endswith("_current/config")]
    assert [c["value_template"] for c in current] == ["{{ value_json.current_a }}"] * 2


async def test_rtu_bus_cutoff_and_keypad_top_up(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """The same story over Modbus RTU (RTU framing over TCP, as a serial device server
    speaks it), with the simulator emulating the wire time of a 115200 baud line."""
    start_f, start = sim_start(SPEED)
    async with Simulator.start(
        meters=3,
        seed=11,
        clock=ScaledClock(SPEED, start_f),
        tcp_port=None,
        rtu_tcp_port=0,
        baud=115200,
    ) as sim:
        assert sim.rtu_tcp_address is not None
        world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
        world.enrol([1], bus="rtu-1", opening_balance=100)
        world.enrol([2, 3], bus="rtu-1", opening_balance=1_000_000)
        sim.set_load(1, 6000)
        config = world.config(
            rtu="socket://{}:{}".format(*sim.rtu_tcp_address),
            broker=(mosquitto.host, mosquitto.port),
            speed=SPEED,
            start=start,
        )
        async with running_gateway(config) as runner:
            gw = runner.gateway
            await eventually(lambda: sim.state(1)["relay_closed"] is False, 40, "cut-off")
            assert gw.meters[M1].state.credit is CreditState.DISCONNECTED
            seq = sim.keypad(1, world.keypad_token(1, 5000))
            await eventually(lambda: sim.state(1)["relay_closed"] is True, 20, "reconnect")
            await eventually(lambda: sim.state(1)["keypad_ack"] == seq, 10, "keypad ack")
            assert all(sim.state(u)["relay_closed"] for u in (2, 3))
            assert gw.counters.poll_failures == 0


async def test_reference_headend_vends_an_online_top_up_end_to_end(site: Site) -> None:
    site.world.enrol([1], opening_balance=60)
    site.sim.set_load(1, 6000)
    headend = Headend()
    client = HeadendClient(headend, site.broker.host, site.broker.port)
    async with running_gateway(_config(site)) as runner:
        await asyncio.wait_for(runner.mqtt_ready.wait(), 10)
        await eventually(lambda: site.sim.state(1)["relay_closed"] is False, 40, "cut-off")
        client.start()
        try:
            result = await asyncio.to_thread(
                client.vend_online,
                "gw-test",
                M1,
                signing_key=ONLINE_KEY,
                key_id="vend-1",
                counter=1,
                amount=9000,
                currency="KES",
            )
        finally:
            client.stop()
        assert result["ok"] is True
        assert result["details"]["credited"] == 9000
        await eventually(lambda: site.sim.state(1)["relay_closed"] is True, 20, "reconnect")


async def test_relay_less_meter_is_switched_through_its_relay_output(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """An Eastron SDM120 (no relay) billed as prepaid: the cut-off opens the coil of the
    relay module enrolled as its relay output, on another bus."""
    start_f, start = sim_start(SPEED)
    clock = ScaledClock(SPEED, start_f)
    async with (
        Simulator.start(meters=1, map_name="sdm120", seed=3, clock=clock) as meters,
        Simulator.start(meters=5, map_name="pe1", seed=4, clock=clock) as relays,
    ):
        meters.set_load(1, 6000)
        world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
        now = datetime.now(UTC)
        key = derive_meter_key(VENDING_KEY, M1, 0)
        with Store.open(world.store_path) as store:
            store.add_meter(
                MeterRecord(M1, "tcp-1", 1, "sdm120", key.secret, 0, relay_output="relays:5:0"),
                enrol(M1, fast_settings(), now, opening_balance=100),
                now,
            )
        data = world.config_data(
            tcp=meters.tcp_address,
            broker=(mosquitto.host, mosquitto.port),
            speed=SPEED,
            start=start,
        )
        host, port = relays.tcp_address
        data["buses"].append({"name": "relays", "kind": "tcp", "host": host, "port": port})
        async with running_gateway(GatewayConfig.model_validate(data)) as runner:
            gw = runner.gateway
            await eventually(lambda: relays.state(5)["relay_closed"] is False, 40, "cut-off")
            assert gw.meters[M1].state.credit is CreditState.DISCONNECTED
            assert all(relays.state(u)["relay_closed"] for u in (1, 2, 3, 4))
