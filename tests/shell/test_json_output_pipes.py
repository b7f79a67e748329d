"""Every JSON output of our programs (`meter-gateway status --json`, `meter-provision status --json`, `meter-provision vend --online`, `meter-sim ctl`) ends quietly with exit 1 when its reader has gone (`... | head` read enough): no BrokenPipeError traceback, nothing on stderr; and `meter-gateway status` ages the status of a gateway whose simulation clock runs 1,000 times faster than real time in real seconds (never negative)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from meter_sim.simulator import Simulator
from tests.support.gateway_env import GatewayWorld

BIN = Path(sys.executable).parent


def _into_a_closed_pipe(prog: str, *args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``prog ARGS | head`` where head has already gone: the read end is closed before the
    program starts, so its first write to standard output fails with EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [str(BIN / prog), *map(str, args)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            cwd=cwd,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "PREPAID_EDGE_VEND_LEDGER": str(cwd / "counters.json")},
        )
    finally:
        os.close(write_end)


def _plain(prog: str, *args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / prog), *map(str, args)],
        capture_output=True,
        cwd=cwd,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PREPAID_EDGE_VEND_LEDGER": str(cwd / "counters.json")},
    )


def _assert_quiet_end(ran: subprocess.CompletedProcess[str]) -> None:
    assert (ran.returncode, ran.stderr) == (1, ""), ran.stderr


def _status_file_of_a_fast_gateway(world: GatewayWorld, config: Path) -> None:
    """Run the gateway (no broker reachable, its clock at 1,000x since the config was
    written) until it wrote its status file, then stop it with SIGTERM."""
    status = world.store_path.with_name(world.store_path.name + ".status.json")
    proc = subprocess.Popen(
        [str(BIN / "meter-gateway"), "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not status.exists():  # another process's file: nothing to await but its state
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no status file within 30 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err


def test_gateway_status_json_ages_in_real_time_and_survives_a_closed_pipe(
    tmp_path: Path,
) -> None:
    world = GatewayWorld(tmp_path, tmp_path / "gateway.db", gateway_id="gw-pipe")
    world.enrol([1])
    config = world.write_config(speed=1000.0, start=datetime.now(UTC))
    _status_file_of_a_fast_gateway(world, config)
    shown = _plain("meter-gateway", "status", "--json", "--config", config, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    gateway_ahead = datetime.fromisoformat(data["written_at"]) - datetime.now(UTC)
    assert gateway_ahead.total_seconds() > 100, "the gateway's clock should run ahead"
    assert 0 <= data["age_s"] < 60
    text = _plain("meter-gateway", "status", "--config", config, cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert "status written -" not in text.stdout
    _assert_quiet_end(
        _into_a_closed_pipe("meter-gateway", "status", "--json", "--config", config, cwd=tmp_path)
    )


def test_provision_status_json_and_online_vend_survive_a_closed_pipe(tmp_path: Path) -> None:
    world = GatewayWorld(tmp_path, tmp_path / "gateway.db", gateway_id="gw-pipe")
    world.enrol(range(1, 40))
    config = world.write_config()
    _assert_quiet_end(
        _into_a_closed_pipe("meter-provision", "status", "--json", "--config", config, cwd=tmp_path)
    )
    made = _plain(
        "meter-provision", "keys", "new-signing-key", "--out", "v.key", "--key-id", "v1",
        cwd=tmp_path,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    vend = ["vend", "--online", "--signing-key", "v.key", "--key-id", "v1", "--currency", "KES",
            "--meter", "PE1-000001", "--amount", "12.50"]  # fmt: skip
    _assert_quiet_end(_into_a_closed_pipe("meter-provision", *vend, cwd=tmp_path))


@pytest.mark.asyncio
async def test_simulator_ctl_json_survives_a_closed_pipe(tmp_path: Path) -> None:
    async with Simulator.start(meters=1, control_port=0) as sim:
        assert sim.control_address is not None
        host, port = sim.control_address
        ran = await asyncio.to_thread(
            _into_a_closed_pipe, "meter-sim", "ctl", "--control", f"{host}:{port}", "state", 1,
            cwd=tmp_path,
        )  # fmt: skip
    _assert_quiet_end(ran)
