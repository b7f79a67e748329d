"""Every command error docs/mqtt.md lists is one a running gateway answers, each for the cause the page gives, and commands on the gateway's own topic work as on the meter's."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from gateway.config import GatewayConfig
from gateway.core.commands import Publish
from gateway.resend import MAX_ROWS, REQUESTER_BURST
from gateway.store import MeterUpdate, Store
from meter_sim.clock import ScaledClock
from meter_sim.simulator import Simulator
from protocol.command_auth import sign_command
from protocol.command_errors import CommandError
from tests.integration.helpers import MessageLog, eventually, running_gateway, sim_start
from tests.support.gateway_env import HEADEND_KEY, ONLINE_KEY, GatewayWorld, meter_id, online_token
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import TestClient

pytestmark = [pytest.mark.asyncio, pytest.mark.broker]

SPEED = 60.0
M1, M2 = meter_id(1), meter_id(2)
GW_TOPIC = "prepaid/v1/gw-test/cmd"
M1_TOPIC = f"prepaid/v1/gw-test/meters/{M1}/cmd"
REPLIES = "headend/hq-1/replies"


@pytest_asyncio.fixture
async def world(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[tuple[Any, ...]]:
    start_f, _ = sim_start(SPEED)
    async with Simulator.start(meters=2, seed=3, clock=ScaledClock(SPEED, start_f)) as sim:
        world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
        with TestClient(mosquitto, "headend-errors") as headend:
            headend.subscribe("prepaid/v1/gw-test/#")
            headend.subscribe("headend/hq-1/replies")
            yield world, sim, mosquitto, headend, MessageLog(headend)


def _config(world: GatewayWorld, sim: Simulator, broker: Mosquitto) -> GatewayConfig:
    _, start = sim_start(SPEED)
    return world.config(
        tcp=sim.tcp_address, broker=(broker.host, broker.port), speed=SPEED, start=start
    )


def _prefill_outbox(world: GatewayWorld, meter: str, rows: int) -> None:
    """Stored (and long acknowledged) messages of ``meter``, as months of events leave."""
    now = datetime.now(UTC)
    body: dict[str, Any] = {"kind": "event", "event": "tariff_scheduled", "reason": "filler"}
    with Store.open(world.store_path) as store:
        state = next(m.state for m in store.load_meters() if m.record.meter_id == meter)
        written = store.commit_cycle(
            [MeterUpdate(state, [Publish(meter, "event", body | {"details": {}})] * rows, now)]
        )
        store.mark_acked([r.id for r in written], now)


def _results(log: MessageLog) -> dict[str, dict[str, Any]]:
    return {
        m["id"] or m.get("correlation") or "?": m
        for t, m in log.pull()
        if t.endswith("cmd/result") or t == "headend/hq-1/replies"
    }


async def test_every_documented_error_code_is_answered(
    world: tuple[Any, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    gw_world, sim, broker, headend, log = world
    gw_world.enrol([1, 2], opening_balance=1_000_000)
    _prefill_outbox(gw_world, M1, MAX_ROWS)
    async with running_gateway(_config(gw_world, sim, broker)) as runner:
        await asyncio.wait_for(runner.mqtt_ready.wait(), 10)
        now = runner.gateway.clock()
        soon = now + timedelta(minutes=30)

        def signed(n: str, *, key: Any = HEADEND_KEY, key_id: str = "hq-1", **kw: Any) -> bytes:
            body = {"v": 1, "id": n, "cmd": "disconnect", "meter": M2, "gateway": "gw-test"}
            body |= {"reason": "test", "expires": soon.isoformat()} | kw
            return json.dumps(sign_command(body, key_id, key)).encode()

        sends: dict[str, tuple[str, bytes, str | None]] = {
            "malformed": (M1_TOPIC, b'{"v": 1, "id": "malformed", "cmd": "reread", "x": 1}', None),
            "too_large": (M1_TOPIC, b" " * 17_000, None),
            "unknown_meter": (
                GW_TOPIC,
                b'{"v": 1, "id": "unknown_meter", "cmd": "reread", "meter": "PE1-999999"}',
                None,
            ),
            "bad_response_topic": (
                M1_TOPIC,
                b'{"v": 1, "id": "bad_response_topic", "cmd": "reread"}',
                "headend/#",
            ),
            "unsigned": (
                M1_TOPIC,
                json.dumps(
                    {"v": 1, "id": "unsigned", "cmd": "disconnect", "meter": M1, "reason": "x"}
                ).encode(),
                None,
            ),
            "unknown_key": (GW_TOPIC, signed("unknown_key", key_id="hq-9"), None),
            "bad_signature": (GW_TOPIC, signed("bad_signature", key=ONLINE_KEY), None),
            "expired": (
                GW_TOPIC,
                signed("expired", expires=(now - timedelta(minutes=1)).isoformat()),
                None,
            ),
            "wrong_gateway": (GW_TOPIC, signed("wrong_gateway", gateway="gw-other"), None),
            "first": (GW_TOPIC, signed("replayed_command"), None),
        }
        for what, (topic, payload, response) in sends.items():
            headend.publish(topic, payload, response_topic=response)
            if what == "first":
                await eventually(lambda: "replayed_command" in _results(log), 10, "first run")
                headend.publish(topic, payload)  # the same signed command again
        # rate_limited: one requester (its response topic) asks for more resends than its
        # budget pays for: M1 holds MAX_ROWS stored messages, so each request costs that.
        for n in range(REQUESTER_BURST // MAX_ROWS):
            ask = {"v": 1, "id": f"flood-{n}", "cmd": "resend", "meter": M1, "from_seq": 1}
            headend.publish(GW_TOPIC, json.dumps(ask).encode(), response_topic=REPLIES)
        last = f"flood-{REQUESTER_BURST // MAX_ROWS - 1}"
        await eventually(lambda: last in _results(log), 10, "the budget spent")
        ask = {"v": 1, "id": "rate_limited", "cmd": "resend", "meter": M1, "from_seq": 1}
        headend.publish(GW_TOPIC, json.dumps(ask).encode(), response_topic=REPLIES)
        expected = {c.value for c in CommandError} - {"storage_unavailable", "internal_error"}

        def all_in() -> dict[str, dict[str, Any]] | None:
            got = _results(log)
            return got if expected <= {r["error"] for r in got.values() if r["error"]} else None

        got = await eventually(all_in, 15, "every error")
        by_error = {r["error"]: r for r in got.values() if r["error"]}
        assert by_error["too_large"]["id"] is None
        for code in expected - {"too_large"}:
            assert by_error[code]["id"] == code, (code, by_error[code])
            assert by_error[code]["ok"] is False

        # The gateway's topic takes a top-up that names its meter.
        token = online_token(1, 41, 500)
        topup = {"v": 1, "id": "gw-topup", "cmd": "topup", "meter": M1, "token": token}
        headend.publish(GW_TOPIC, json.dumps(topup).encode())
        answer = await eventually(lambda: _results(log).get("gw-topup"), 10, "gateway-topic topup")
        assert (answer["ok"], answer["details"]["credited"]) == (True, 500), answer

        # storage_unavailable is answered when the store's disk refuses writes:
        # tests/reliability/test_storage_trouble.py fills a real disk for it.
        # internal_error is the boundary's answer to a fault of ours, which no input makes:
        # a bug is stood in for by a resend planner that raises; the next command is served.
        def bug(meter_id: str, from_seq: int, requester: str) -> object:
            raise RuntimeError(f"a bug planning {meter_id} from {from_seq} for {requester}")

        monkeypatch.setattr(runner.resends, "plan", bug)
        ask = {"v": 1, "id": "after-bug", "cmd": "resend", "meter": M1, "from_seq": 1}
        headend.publish(GW_TOPIC, json.dumps(ask).encode())
        broken = await eventually(lambda: _results(log).get("after-bug"), 10, "internal_error")
        assert broken["error"] == "internal_error", broken
        assert runner.intake.internal_errors == 1
        monkeypatch.undo()
        headend.publish(GW_TOPIC, json.dumps(ask | {"id": "then"}).encode())
        then = await eventually(lambda: _results(log).get("then"), 10, "the next command")
        assert then["ok"] is True, then
