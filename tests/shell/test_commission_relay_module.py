"""`meter-provision commission` of a meter without a relay of its own switches and reads back the coil of the relay module enrolled as its relay output (on another bus), and fails with the read-back when the module's contactor does not follow."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from gateway.store import Store
from meter_sim.simulator import Simulator
from provisioning.__main__ import main
from tests.support.gateway_env import GatewayWorld, to_toml

GW = "gw-relay-module"
METER = "SDM-000001"


@dataclass
class Site:
    folder: Path
    meters: Simulator
    relays: Simulator

    @property
    def config(self) -> Path:
        return self.folder / "gateway.toml"


def cli(*argv: object) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest_asyncio.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with (
        Simulator.start(meters=1, map_name="sdm120", seed=3) as meters,
        Simulator.start(meters=5, map_name="pe1", seed=4) as relays,
    ):
        folder = tmp_path / "gw"
        assert cli("init", "--dir", folder, "--gateway-id", GW, "--self-signed-days", "30") == 0
        world = GatewayWorld(folder, folder / "gateway.db", gateway_id=GW)
        data = world.config_data(tcp=meters.tcp_address, timeout=0.3)
        host, port = relays.tcp_address
        data["buses"].append({"name": "relays", "kind": "tcp", "host": host, "port": port})
        (folder / "gateway.toml").write_text(to_toml(data))
        assert cli("keys", "new-vending-key", "--out", folder / "vending.key") == 0
        key = folder / "meter.key"
        assert cli("keys", "meter-key", "--vending-key", folder / "vending.key",
                   "--meter", METER, "--out", key) == 0  # fmt: skip
        assert cli("enrol", "--config", folder / "gateway.toml", "--meter", METER, "--bus", "tcp-1",
                   "--unit", 1, "--map", "sdm120", "--relay-output", "relays:5:0",
                   "--key-file", key, "--price-per-kwh", "100", "--credit", "10.00") == 0  # fmt: skip
        yield Site(folder, meters, relays)


async def commission(site: Site) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "provisioning",
        "commission",
        METER,
        "--config",
        str(site.config),
        "--yes",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(60):
        out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


@pytest.mark.asyncio
async def test_commission_switches_and_reads_back_the_relay_module_coil(site: Site) -> None:
    before = site.relays.requests_served
    rc, text = await commission(site)
    assert rc == 0, text
    assert "PASS  relay    relay module relays:5:0: open->open, closed->closed" in text
    assert "commissioning PASSED" in text
    assert site.relays.requests_served >= before + 5  # read, open, read, close, read
    assert site.relays.state(5)["relay_closed"] is True  # left as it was: supply on
    with Store.open(site.folder / "gateway.db") as store:
        report = store.events(METER)[-1]
    assert report["event"] == "commissioned"
    details: Any = report["details"]
    checks = {c["name"]: c for c in details["checks"]}
    assert checks["relay"]["ok"] is True


@pytest.mark.asyncio
async def test_a_relay_module_that_does_not_follow_fails_commissioning(site: Site) -> None:
    site.relays.inject_fault(5, "relay_stuck")
    rc, text = await commission(site)
    assert rc == 1, text
    assert "FAIL  relay    relay module relays:5:0: read-back mismatch: open->closed" in text
    assert "commissioning FAILED" in text
