"""Hostile MQTT command payloads sent to a running gateway (malformed JSON, wrong types, huge payloads, unicode, deep nesting, random JSON values, wrong meters and topics): each gets a typed refusal on the result topic, the gateway keeps running and nothing in the store changes."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from meter_sim.clock import ScaledClock
from meter_sim.simulator import Simulator
from tests.integration.helpers import MessageLog, eventually, running_gateway, sim_start
from tests.reliability.harness import env_count
from tests.support.gateway_env import GatewayWorld, meter_id
from tests.support.gateway_process import first_readings
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import TestClient

pytestmark = [pytest.mark.asyncio, pytest.mark.broker, pytest.mark.reliability]

ROOT = "prepaid/v1/gw-test"
RANDOM_CASES = env_count("PREPAID_EDGE_FUZZ_COMMANDS", 300, 3000)
ERRORS = {
    "malformed",
    "too_large",
    "unknown_meter",
    "unsigned",
    "unknown_key",
    "bad_signature",
    "expired",
    "typo",
    "wrong_meter_or_forged",
}

FIXED: list[bytes] = [
    b"",
    b"{",
    b"null",
    b"[]",
    b'"topup"',
    b"\xff\xfe\x00garbage",
    b'{"v": 1}',
    b'{"v": "1", "id": "a", "cmd": "topup", "token": 5}',
    b'{"v": 1, "id": "a", "cmd": "topup", "token": "\xe2\x98\x83\xe2\x98\x83"}',
    b'{"v": 1, "id": "\xe2\x98\x83", "cmd": "reread", "meter": "PE1-000001"}',
    b'{"v": 1, "id": "b", "cmd": "resend", "meter": "PE1-000001", "from_seq": -5}',
    b'{"v": 1, "id": "c", "cmd": "resend", "meter": "PE1-000001", "from_seq": 1e400}',
    b'{"v": 1, "id": "d", "cmd": "disconnect", "meter": "PE1-000001", "reason": "x"}',
    b'{"v": 1, "id": "e", "cmd": "tariff_update", "meter": "PE1-000001", "tariff": []}',
    b'{"v": 1, "id": "f", "cmd": "reread", "meter": "PE1-000002"}',  # topic says meter 1
    b'{"v": 1, "id": "g", "cmd": "topup", "token": "' + b"A" * 20_000 + b'"}',
    b'{"v": 1, "id": "h", "cmd": [], "expires": -1}',  # an unhashable cmd once raised
    b'{"v": 1, "id": "i", "cmd": {"disconnect": 1}}',
]


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["int", "str", "bool", "none", "float"] + (["list", "dict"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.choice([0, -1, 1, 2**63, -(2**70), rng.randint(-1000, 1000)])
    if kind == "str":
        return "".join(
            chr(
                rng.choice(
                    [
                        rng.randint(32, 126),
                        rng.choice([rng.randint(0x80, 0xD7FF), rng.randint(0xE000, 0x10FFFF)]),
                    ]
                )
            )
            for _ in range(rng.randint(0, 30))
        )
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "none":
        return None
    if kind == "float":
        return rng.uniform(-1e9, 1e9)
    if kind == "list":
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ["v", "id", "cmd", "token", "meter", "from_seq", "sig", "expires", "key_id"]
    out = {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randint(0, 6))}
    if rng.random() < 0.7:
        out["cmd"] = rng.choice(["topup", "disconnect", "reconnect", "resend", "reread", "x"])
        out["v"] = 1
        out["id"] = f"r{rng.randint(0, 10**6)}"
    return out


async def test_hostile_commands_are_refused_and_change_nothing(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    rng = random.Random(5)
    payloads = FIXED + [
        json.dumps(_random_json(rng), ensure_ascii=rng.random() < 0.5).encode()
        for _ in range(RANDOM_CASES)
    ]
    bodies = await _send_all(tmp_path, mosquitto, payloads)
    refused = [m for m in bodies if m.get("ok") is False]
    ok = [m for m in bodies if m.get("ok") is True]
    # The only commands that may succeed are harmless ones (reread, resend).
    assert all(m.get("error") != "internal_error" for m in bodies), bodies[:3]
    errors = {m.get("error") for m in refused}
    assert errors <= ERRORS | {"replayed_command"}, errors
    print(f"hostile commands: {len(bodies)} sent, {len(refused)} refused, {len(ok)} harmless ok")


async def test_deeply_nested_json_is_malformed(tmp_path: Path, mosquitto: Mosquitto) -> None:
    bodies = await _send_all(tmp_path, mosquitto, [b"[" * 5000 + b"]" * 5000])
    assert bodies[0]["error"] == "malformed", bodies


async def _send_all(
    tmp_path: Path, mosquitto: Mosquitto, payloads: list[bytes]
) -> list[dict[str, Any]]:
    """Publish every payload as a command to a running gateway (and to a non-command
    topic); the results, after checking that the gateway runs on and no balance moved."""
    world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
    world.enrol([1, 2], opening_balance=5_000)
    topics = [f"{ROOT}/meters/{meter_id(1)}/cmd", f"{ROOT}/cmd", f"{ROOT}/meters/NOPE/cmd"]
    start_f, start = sim_start(1.0)
    async with Simulator.start(meters=2, seed=5, clock=ScaledClock(1.0, start_f)) as sim:
        sim.set_load(1, 0)
        sim.set_load(2, 0)
        config = world.config(
            tcp=sim.tcp_address, broker=(mosquitto.host, mosquitto.port), speed=1.0, start=start
        )
        with TestClient(mosquitto, "fuzzer") as client:
            client.subscribe(f"{ROOT}/cmd/result")
            log = MessageLog(client)
            async with running_gateway(config) as runner:
                gw = runner.gateway
                await first_readings(gw, [meter_id(1)])
                before = _snapshot(gw)
                for n, payload in enumerate(payloads):
                    client.publish(topics[n % len(topics)], payload)
                    client.publish(f"{ROOT}/meters/{meter_id(1)}/reading", payload)
                results = await eventually(
                    lambda: (r := log.pull()) and len(r) >= len(payloads) and r,
                    60,
                    f"{len(payloads)} results",
                )
                assert not runner.stop.is_set()
                assert _snapshot(gw) == before
    return [m for _t, m in results]


def _snapshot(gw: Any) -> dict[str, Any]:
    return {
        mid: (m.state.ledger.balance, m.state.ledger.topups, m.state.credit)
        for mid, m in gw.meters.items()
    }
