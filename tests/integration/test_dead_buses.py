"""Dead buses speak, with the gateway running on a missing serial device and a refused Modbus TCP endpoint: one WARNING per bus with the OS's reason (not one per poll), the reason in the health summary, the status file and `meter-gateway status`, one INFO when the endpoint comes up; `meter-provision status` reports each meter's communication as the gateway committed it (not read yet, lost, ok)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from gateway.__main__ import main as gateway_main
from gateway.config import load_config
from meter_sim.simulator import Simulator
from protocol.mqtt import StatusMessage
from provisioning.__main__ import main as provision_main
from tests.integration.helpers import eventually, running_gateway
from tests.support.gateway_env import GatewayWorld, meter_id
from tests.support.mosquitto import free_port

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

TCP_METER, RTU_METER = meter_id(1), meter_id(2)


def cli(main: Any, *argv: object) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([str(a) for a in argv]) == 0
    return out.getvalue()


def provision_status(config: Path) -> dict[str, dict[str, Any]]:
    rows = json.loads(cli(provision_main, "status", "--config", config, "--json"))
    return {row["meter"]: row for row in rows}


def warnings_about(caplog: pytest.LogCaptureFixture, bus: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "gateway.bus_faults"
        and r.levelno == logging.WARNING
        and r.getMessage().startswith(f"bus {bus}:")
    ]


async def test_dead_buses_speak(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    port = free_port()  # nothing listens there: connections are refused
    device = tmp_path / "ttyUSB-unplugged"
    world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
    world.enrol([1, 2], place=lambda n: ("tcp-1", 1) if n == 1 else ("rtu-1", 2))
    path = world.write_config(tcp=("127.0.0.1", port), rtu=str(device))
    config = load_config(path)
    before = provision_status(path)
    assert {m: (r["comm"], r["comm_ok"]) for m, r in before.items()} == {
        TCP_METER: ("not read yet", False),
        RTU_METER: ("not read yet", False),
    }
    async with running_gateway(config) as runner:
        gw = runner.gateway
        await eventually(
            lambda: (
                not gw.meters[TCP_METER].state.comm_ok and not gw.meters[RTU_METER].state.comm_ok
            ),
            within=20,
            what="both meters reported lost",
        )
        await eventually(lambda: gw.counters.poll_failures >= 8, within=20, what="more polls")
        refused = f"cannot connect to 127.0.0.1:{port}: Connection refused"
        missing = f"cannot open {device}: No such file or directory"
        assert warnings_about(caplog, "tcp-1") == [f"bus tcp-1: {refused}"]
        assert warnings_about(caplog, "rtu-1") == [f"bus rtu-1: {missing}"]
        print(f"\ndead buses: {gw.counters.poll_failures} failed polls, 1 warning per bus")

        health = runner.health()
        assert health.bus_faults == {"tcp-1": refused, "rtu-1": missing}
        assert health.buses == {"tcp-1": "down", "rtu-1": "down"}
        status = StatusMessage.model_validate_json(runner.status_message(True))
        assert status.health is not None
        assert status.health.bus_faults == health.bus_faults
        runner.write_status_file()
        shown = cli(gateway_main, "status", "--config", path)
        assert f"bus tcp-1: down ({refused})" in shown
        assert f"bus rtu-1: down ({missing})" in shown

        lost = provision_status(path)
        assert {m: (r["comm"], r["comm_ok"]) for m, r in lost.items()} == {
            TCP_METER: ("lost", False),
            RTU_METER: ("lost", False),
        }

        async with Simulator.start(meters=1, tcp_port=port, seed=3):
            await eventually(
                lambda: gw.meters[TCP_METER].state.comm_ok, within=20, what="tcp-1 back"
            )
            back = [
                r.getMessage()
                for r in caplog.records
                if r.name == "gateway.bus_faults" and r.levelno == logging.INFO
            ]
            assert len(back) == 1
            assert back[0].startswith("bus tcp-1: reachable again after ")
            assert back[0].endswith(f"(was: {refused})")
            assert runner.health().bus_faults == {"rtu-1": missing}
            rows = provision_status(path)
            assert (rows[TCP_METER]["comm"], rows[TCP_METER]["comm_ok"]) == ("ok", True)
            assert rows[TCP_METER]["last_reading"] is not None
            assert rows[RTU_METER]["comm"] == "lost"
    assert len(warnings_about(caplog, "rtu-1")) == 1
