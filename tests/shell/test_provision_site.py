"""A whole site through the CLI: init, enrol, commission with the simulator, then the
running gateway cuts the commissioned meter off when its credit runs out, a keypad top-up
brings it back, and the commissioning report reaches the headend as an event."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from meter_sim.clock import ScaledClock
from meter_sim.simulator import Simulator
from protocol.tokens.keypad import issue_keypad
from protocol.tokens.token_class import TokenClass
from provisioning.key_files import read_secret_file
from provisioning.site import load_site_config
from tests.integration.helpers import MessageLog, eventually, running_gateway, sim_start
from tests.shell.test_provision_cli import GW, cli
from tests.support.gateway_env import GatewayWorld, to_toml
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import TestClient

SPEED = 60.0
METER = "PE1-000001"


async def _commission(config: Path, sim: Simulator) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "provisioning",
        "commission",
        METER,
        "--config",
        str(config),
        "--yes",
        "--keypad-timeout",
        "20",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(60):
        while line := (await proc.stdout.readline()).decode():
            lines.append(line)
            if "test token on the meter's keypad:" in line:
                sim.keypad(1, line.split(":", 1)[1].replace(" ", "").strip())
        _, err = await proc.communicate()
    assert proc.returncode == 0, "".join(lines) + err.decode()
    return "".join(lines)


@pytest.mark.asyncio
@pytest.mark.broker
async def test_from_init_to_a_commissioned_meter_that_works_in_the_gateway(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    start_f, start = sim_start(SPEED)
    folder = tmp_path / "gw"
    async with Simulator.start(meters=1, seed=3, clock=ScaledClock(SPEED, start_f)) as sim:
        assert cli("init", "--dir", folder, "--gateway-id", GW).rc == 0
        world = GatewayWorld(folder, folder / "gateway.db", gateway_id=GW)
        config_path = folder / "gateway.toml"
        config_path.write_text(
            to_toml(
                world.config_data(
                    tcp=sim.tcp_address,
                    broker=(mosquitto.host, mosquitto.port),
                    speed=SPEED,
                    start=start,
                )
            )
        )
        vending = folder / "vending.key"
        key = folder / f"{METER}.key"
        assert cli("keys", "new-vending-key", "--out", vending).rc == 0
        assert (
            cli("keys", "meter-key", "--vending-key", vending, "--meter", METER, "--out", key).rc
            == 0
        )
        scan = await asyncio.to_thread(
            cli, "scan", "--config", config_path, "--bus", "tcp-1", "--units", "1-2"
        )
        assert "   1  pe1" in scan.out
        # Small thresholds and no overdraft: 1.50 (150 minor units) runs out in seconds at
        # 6 kW and 1.00 a kWh. Money on the command line is in currency units.
        ran = cli(
            "enrol", "--config", config_path, "--meter", METER, "--bus", "tcp-1", "--unit", "1",
            "--key-file", key, "--price-per-kwh", "1", "--credit", "1.50",
            "--alarm1", "1", "--alarm2", "0.50", "--overdraft-limit", "0",
            "--reconnect-threshold", "0.50", "--max-balance", "100000",
            "--expected-serial", sim.layout.serial_number(1),
        )  # fmt: skip
        assert ran.rc == 0, ran.err
        report = await _commission(config_path, sim)
        assert "commissioning PASSED" in report

        sim.set_load(1, 6000)
        config = load_site_config(config_path)
        with TestClient(mosquitto, "headend-prov") as headend:
            headend.subscribe(f"prepaid/v1/{GW}/#")
            log = MessageLog(headend)
            async with running_gateway(config):
                commissioned = await eventually(
                    lambda: log.events(METER, "commissioned"), 20, "commissioning event"
                )
                assert commissioned[0]["reason"] == "pass"
                assert {c["name"] for c in commissioned[0]["details"]["checks"]} >= {
                    "serial",
                    "relay",
                    "keypad",
                }
                await eventually(lambda: sim.state(1)["relay_closed"] is False, 40, "cut-off")
                token = issue_keypad(
                    read_secret_file(vending, 32), METER, 0, TokenClass.CREDIT, 1, 5000
                )
                seq = sim.keypad(1, token)
                await eventually(lambda: sim.state(1)["relay_closed"] is True, 20, "reconnect")
                await eventually(lambda: sim.state(1)["keypad_ack"] == seq, 10, "keypad ack")
                accepted = await eventually(
                    lambda: log.events(METER, "token_accepted"), 10, "accepted event"
                )
                assert accepted[0]["details"]["channel"] == "keypad"
