"""One gateway per store, with a real gateway process, the simulator and Mosquitto: a second gateway on the same store is refused with one line naming the first one's PID; a meter enrolled while the gateway runs is polled without a restart (its readings reach MQTT); commission and import are refused while the gateway runs; a SIGKILLed gateway leaves no stale lock."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.store import Store
from meter_sim.simulator import Simulator
from protocol.tokens.keys import derive_meter_key
from provisioning.key_files import write_secret_file
from tests.integration.helpers import MessageLog, eventually
from tests.support.gateway_env import VENDING_KEY, GatewayWorld, meter_id
from tests.support.gateway_process import start_gateway
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import TestClient

pytestmark = [pytest.mark.asyncio, pytest.mark.broker, pytest.mark.slow]


async def run(*argv: object) -> subprocess.CompletedProcess[str]:
    """A CLI in a subprocess, awaited in a thread so the simulator keeps answering."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", *(str(a) for a in argv)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def refused_naming(done: subprocess.CompletedProcess[str], pid: int, prog: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"{prog}: "), done.stderr
    assert f"PID {pid}" in done.stderr, done.stderr


async def test_one_gateway_per_store(tmp_path: Path, mosquitto: Mosquitto) -> None:
    world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
    world.enrol([1], opening_balance=100_000)
    log_path = tmp_path / "gateway.log"
    key = tmp_path / "PE1-000003.key"
    write_secret_file(key, derive_meter_key(VENDING_KEY, meter_id(3), 0).secret)
    async with Simulator.start(meters=3, seed=11) as sim:
        config = world.write_config(tcp=sim.tcp_address, broker=(mosquitto.host, mosquitto.port))
        with TestClient(mosquitto, "headend-lock") as headend:
            headend.subscribe("prepaid/v1/gw-test/meters/+/reading")
            log = MessageLog(headend)
            first = start_gateway(config, log_path)
            try:
                await eventually(lambda: log.of(meter_id(1), "reading"), 30, "meter 1 polled")

                second = await run("gateway", "run", "--config", config)
                refused_naming(second, first.pid, "meter-gateway run")

                asked = time.monotonic()
                enrolled = await run(
                    "provisioning", "enrol", "--config", config, "--meter", meter_id(3),
                    "--bus", "tcp-1", "--unit", 3, "--key-file", key, "--price-per-kwh", 100,
                )  # fmt: skip
                assert enrolled.returncode == 0, enrolled.stderr
                assert f"PID {first.pid}" in enrolled.stdout, enrolled.stdout
                await eventually(
                    lambda: log.of(meter_id(3), "reading"), 30, "meter 3 polled, no restart"
                )
                print(
                    f"\nenrol to the new meter's first reading on MQTT: {time.monotonic() - asked:.2f} s"
                )
                assert first.poll() is None, log_path.read_text()
                assert "now polling 1 new meters: PE1-000003" in log_path.read_text()

                commission = await run(
                    "provisioning", "commission", meter_id(1), "--config", config, "--yes"
                )
                refused_naming(commission, first.pid, "meter-provision commission")
                assert "RS-485" in commission.stderr
                imported = await run(
                    "provisioning", "import", tmp_path / "any.json", "--config", config
                )
                refused_naming(imported, first.pid, "meter-provision import")
            finally:
                first.send_signal(signal.SIGKILL)
                first.wait()
            # The kernel dropped the dead process's lock: a new gateway starts at once.
            with Store.open(world.store_path) as store:
                last = store.last_seq(meter_id(3))  # what the killed gateway committed
            third = start_gateway(config, log_path)
            try:
                await eventually(
                    lambda: [m for m in log.of(meter_id(3), "reading") if m["seq"] > last],
                    30,
                    "readings of the new gateway",
                )
            finally:
                third.send_signal(signal.SIGTERM)
                assert third.wait(30) == 0, log_path.read_text()
