"""examples/headend.py copied out of the repository, with none of our packages importable, sells an online top-up and sends a signed disconnect to a real gateway through a real Mosquitto: the meter is credited, then its relay opens, and the headend sees no schema violation."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from meter_sim.clock import ScaledClock
from meter_sim.simulator import Simulator
from tests.integration.helpers import eventually, running_gateway, sim_start
from tests.support.gateway_env import HEADEND_KEY, ONLINE_KEY, GatewayWorld, meter_id
from tests.support.mosquitto import Mosquitto
from tests.unit.test_headend_reference import HARNESS, OURS, _copied_out

pytestmark = [pytest.mark.asyncio, pytest.mark.broker]

SPEED = 60.0


async def test_the_copied_out_example_tops_up_and_disconnects(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    folder = tmp_path / "integrator"
    folder.mkdir()
    script = _copied_out(folder)
    vend_key, hq_key = folder / "vend.key", folder / "hq.key"
    vend_key.write_text(ONLINE_KEY.private_bytes_raw().hex() + "\n")
    hq_key.write_text(HEADEND_KEY.private_bytes_raw().hex() + "\n")
    start_f, start = sim_start(SPEED)
    async with Simulator.start(meters=1, seed=7, clock=ScaledClock(SPEED, start_f)) as sim:
        world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
        world.enrol([1], opening_balance=5_000)
        config = world.config(
            tcp=sim.tcp_address,
            broker=(mosquitto.host, mosquitto.port),
            speed=SPEED,
            start=start,
        )
        argv = [
            "--broker", f"{mosquitto.host}:{mosquitto.port}", "--db", str(folder / "h.db"),
            "--topup", f"gw-test/{meter_id(1)}", "--amount", "9000", "--currency", "KES",
            "--counter", "1", "--signing-key", str(vend_key), "--key-id", "vend-1",
            "--command", "disconnect", f"gw-test/{meter_id(1)}", "--reason", "moved out",
            "--command-key", str(hq_key), "--command-key-id", "hq-1", "--duration", "1",
        ]  # fmt: skip
        code = HARNESS.format(
            ours=OURS, path=str(script), snippet=f"sys.exit(headend.main({argv!r}))"
        )
        async with running_gateway(config) as runner:
            await asyncio.wait_for(runner.mqtt_ready.wait(), 10)
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",
                "-c",
                code,
                cwd=folder,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            text = out.decode()
            assert proc.returncode == 0, text + err.decode()
            assert "top-up credited" in text
            assert '"credited": 9000' in text
            assert "disconnect done" in text
            assert "0 schema violations" in text
            await eventually(lambda: sim.state(1)["relay_closed"] is False, 20, "relay opened")
