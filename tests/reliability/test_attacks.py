"""Attacks on a running gateway: keypad guessing is locked out and the lock holds across a restart; forged, foreign and replayed tokens on the keypad, forged, expired and foreign online tokens and unsigned or stale remote disconnects over MQTT move no money and switch nothing; a world-readable MQTT key file stops the gateway from starting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.store import Store
from meter_sim.clock import ScaledClock
from meter_sim.simulator import Simulator
from protocol.command_auth import sign_command
from protocol.tokens.keypad import issue_keypad
from protocol.tokens.token_class import TokenClass
from tests.integration.helpers import MessageLog, eventually, running_gateway, sim_start
from tests.support.gateway_env import HEADEND_KEY, GatewayWorld, meter_id, online_token
from tests.support.gateway_process import first_readings
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import TestClient
from tests.support.pki import TestCA

pytestmark = [pytest.mark.reliability, pytest.mark.broker]

M1 = meter_id(1)
TOPIC = f"prepaid/v1/gw-test/meters/{M1}/cmd"


def test_world_readable_key_file_refuses_to_start(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    client = ca.issue("gw-test", server=False)
    os.chmod(client.key, 0o644)
    world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
    world.enrol([1])
    data = world.config_data(tcp=("127.0.0.1", 1), broker=("127.0.0.1", 1))
    data["mqtt"]["brokers"][0]["tls"] = True
    data["mqtt"].update(
        ca_file=str(ca.cert_path), cert_file=str(client.cert), key_file=str(client.key)
    )
    config = world.write_config_data(data)
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert f"chmod 600 {client.key}" in done.stderr, done.stdout + done.stderr


@pytest.mark.asyncio
async def test_keypad_guessing_and_forged_commands(tmp_path: Path, mosquitto: Mosquitto) -> None:
    world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
    world.enrol([1, 2], opening_balance=5_000)
    start_f, start = sim_start(1.0)
    async with Simulator.start(meters=2, seed=3, clock=ScaledClock(1.0, start_f)) as sim:
        sim.set_load(1, 0)
        config = world.config(
            tcp=sim.tcp_address, broker=(mosquitto.host, mosquitto.port), speed=1.0, start=start
        )
        with TestClient(mosquitto, "attacker") as client:
            client.subscribe("prepaid/v1/gw-test/#")
            log = MessageLog(client)
            async with running_gateway(config) as runner:
                gw = runner.gateway
                await first_readings(gw, [M1])
                balance = gw.meters[M1].state.ledger.balance
                # Guesses: another meter's genuine token and forged digits with a good check
                # digit (a token for meter 1 under the wrong vending key).
                guesses = [
                    world.keypad_token(2, 1000),
                    issue_keypad(bytes(32), M1, 0, TokenClass.CREDIT, 1, 1000),
                    issue_keypad(bytes(32), M1, 0, TokenClass.CREDIT, 2, 1000),
                    issue_keypad(bytes(32), M1, 0, TokenClass.CREDIT, 3, 1000),
                    issue_keypad(bytes(32), M1, 0, TokenClass.CREDIT, 4, 1000),
                ]
                for digits in guesses:
                    await _typed_and_acknowledged(sim, digits)
                rejected = await eventually(
                    lambda: (
                        len(log.events(M1, "token_rejected")) >= len(guesses)
                        and log.events(M1, "token_rejected")
                    ),
                    10,
                    "rejections",
                )
                reasons = [e["reason"] for e in rejected]
                assert "locked_out" in reasons, reasons

                # Over MQTT: forged, expired and foreign online tokens; unsigned and stale
                # remote disconnects.
                forged = online_token(1, 5, 1000)
                forged = forged[:-4] + ("AAAA" if not forged.endswith("AAAA") else "BBBB")
                attempts: dict[str, dict[str, Any]] = {
                    "forged": {"cmd": "topup", "token": forged},
                    "expired": {
                        "cmd": "topup",
                        "token": online_token(1, 6, 1000, valid_for=timedelta(seconds=-30)),
                    },
                    "foreign": {"cmd": "topup", "token": online_token(2, 7, 1000)},
                    "unsigned": {"cmd": "disconnect", "meter": M1, "reason": "attack"},
                    "stale": _signed_disconnect(datetime.now(UTC) - timedelta(minutes=1)),
                }
                for name, body in attempts.items():
                    payload = {"v": 1, "id": f"attack-{name}", "correlation": name, **body}
                    client.publish(TOPIC, json.dumps(payload).encode())
                results = await eventually(
                    lambda: _results(log) if set(attempts) <= set(_results(log)) else None,
                    15,
                    "results",
                )
                for name in attempts:
                    assert results[name]["ok"] is False, (name, results[name])
                assert gw.meters[M1].state.ledger.balance == balance
                assert sim.state(1)["relay_closed"] is True

            # Restart: the lock is still there; a genuine token typed while locked is refused.
            with Store.open(world.store_path) as store:
                lockout = {m.record.meter_id: m.lockout for m in store.load_meters()}[M1]
            assert lockout, "the lockout state was not stored"
            async with running_gateway(config) as runner:
                gw = runner.gateway
                before = len(log.events(M1, "token_rejected"))
                seq = sim.keypad(1, world.keypad_token(1, 1000))
                await eventually(lambda: sim.state(1)["keypad_ack"] == seq, 10, "ack after restart")
                after = await eventually(
                    lambda: log.events(M1, "token_rejected")[before:], 10, "refused while locked"
                )
                assert after[0]["reason"] == "locked_out", after
                assert gw.meters[M1].state.ledger.balance == balance


async def _typed_and_acknowledged(sim: Simulator, digits: str) -> None:
    seq = sim.keypad(1, digits)
    await eventually(lambda: sim.state(1)["keypad_ack"] == seq, 10, "keypad ack")


def _signed_disconnect(expires: datetime) -> dict[str, Any]:
    body: dict[str, Any] = {
        "v": 1,
        "id": "attack-stale",
        "cmd": "disconnect",
        "meter": M1,
        "gateway": "gw-test",
        "reason": "stale",
        "expires": expires.isoformat(),
    }
    return sign_command(body, "hq-1", HEADEND_KEY)


def _results(log: MessageLog) -> dict[str, dict[str, Any]]:
    return {m["correlation"]: m for t, m in log.pull() if t.endswith("cmd/result")}
