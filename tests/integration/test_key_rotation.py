"""A whole site's keys rotated as a utility would (issue 18): the next epoch's keys installed with `meter-provision keys install` while the gateway runs, key-change tokens vended with `meter-provision vend` and typed on the simulator's keypads (one sent as the signed online twin), then tokens of the old epoch refused and new-epoch ones credited; and set maximum power and test tokens carried out on the real PE-1 meter (load limit written and read back, test code on the display)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from gateway.config import GatewayConfig
from gateway.core.commands import DisplayCode
from gateway.store import Store
from meter_sim.clock import ScaledClock
from meter_sim.simulator import Simulator
from protocol.tokens.keys import derive_meter_key
from protocol.tokens.online import issue_online
from protocol.tokens.token_class import TokenClass
from tests.integration.helpers import MessageLog, eventually, running_gateway, sim_start
from tests.support.gateway_env import ONLINE_KEY, VENDING_KEY, GatewayWorld, meter_id
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import TestClient

pytestmark = [pytest.mark.asyncio, pytest.mark.broker]

SPEED = 1.0
SITE = [1, 2, 3]


@dataclass
class Site:
    world: GatewayWorld
    sim: Simulator
    broker: Mosquitto
    headend: TestClient
    log: MessageLog
    folder: Path

    def config(self) -> GatewayConfig:
        _, start = sim_start(SPEED)
        return self.world.config(
            tcp=self.sim.tcp_address, broker=(self.broker.host, self.broker.port), start=start
        )

    async def provision(self, *args: str) -> str:
        """``meter-provision ARGS`` in its own process (the gateway runs in this loop)."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "provisioning", *args,
            cwd=self.folder,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        return out.decode()

    def events(self, unit: int, name: str) -> Callable[[], list[dict[str, Any]]]:
        return lambda: self.log.events(meter_id(unit), name)

    def acknowledged(self, unit: int, seq: int) -> Callable[[], bool]:
        return lambda: bool(self.sim.state(unit)["keypad_ack"] == seq)

    async def vend(self, unit: int, *args: str) -> str:
        out = await self.provision(
            "vend", "--vending-key", "vending.key", "--ledger", "counters.json",
            "--meter", meter_id(unit), *args,
        )  # fmt: skip
        return out.strip().replace(" ", "")  # printed in groups of four


@pytest_asyncio.fixture
async def site(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[Site]:
    start_f, _ = sim_start(SPEED)
    async with Simulator.start(meters=3, seed=7, clock=ScaledClock(SPEED, start_f)) as sim:
        world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
        world.enrol(SITE, opening_balance=100_000)
        key = tmp_path / "vending.key"
        key.write_text(VENDING_KEY.hex() + "\n")
        key.chmod(0o600)
        with TestClient(mosquitto, "headend-test") as headend:
            headend.subscribe("prepaid/v1/gw-test/#")
            site = Site(world, sim, mosquitto, headend, MessageLog(headend), tmp_path)
            site.world.write_config(tcp=sim.tcp_address, broker=(mosquitto.host, mosquitto.port))
            yield site


def _details(event: dict[str, Any]) -> dict[str, Any]:
    details: dict[str, Any] = event["details"]
    return details


async def test_rotating_a_sites_keys(site: Site) -> None:
    async with running_gateway(site.config()) as runner:
        gw = runner.gateway
        await asyncio.wait_for(runner.mqtt_ready.wait(), 10)
        # Tokens vended in epoch 0 before the rotation, typed only after it.
        stale = {u: await site.vend(u, "--amount", "1.00") for u in SITE}

        # 1. The next epoch's keys go to the gateway first (SIGHUP would load them in a
        # gateway run as a service; here the test does what SIGHUP does).
        installed = await site.provision(
            "keys", "install", "--config", "gateway.toml",
            "--vending-key", "vending.key", "--epoch", "1", "--all",
        )  # fmt: skip
        assert "installed the key epoch 1 keys of 3 meter(s)" in installed
        await gw.reload_meters()
        assert all(1 in gw.meters[meter_id(u)].next_keys for u in SITE)

        # 2. A key-change token per meter, from the vendor's counter ledger, typed on the
        # keypads of meters 1 and 2; meter 3 gets the signed online twin of its token.
        changes = {u: await site.vend(u, "--class", "key-change", "--value", "1") for u in SITE}
        for u in (1, 2):
            site.sim.keypad(u, changes[u])
        counter = gw.meters[meter_id(3)].window.highest + 1
        now = datetime.now(UTC)
        online = issue_online(
            ONLINE_KEY, "vend-1", meter_id(3), counter, TokenClass.KEY_CHANGE, 1, "KES",
            bytes(16), now - timedelta(minutes=1), now + timedelta(days=1),
        )  # fmt: skip
        cmd = {"v": 1, "id": "kc-3", "cmd": "topup", "token": online}
        site.headend.publish(
            f"prepaid/v1/gw-test/meters/{meter_id(3)}/cmd", json.dumps(cmd).encode()
        )
        for u in SITE:
            changed = await eventually(site.events(u, "key_changed"), 20, f"key change {u}")
            assert _details(changed[0])["to_epoch"] == 1
        assert {gw.meters[meter_id(u)].window.epoch for u in SITE} == {1}
        results = [m for t, m in site.log.pull() if t.endswith("cmd/result")]
        assert [(r["id"], r["ok"], r["details"]["class"]) for r in results] == [
            ("kc-3", True, "key-change")
        ]

        # The store holds the new key and epoch, committed with the token.
        with Store.open(site.world.store_path) as store:
            for stored in store.load_meters():
                mid = stored.record.meter_id
                assert stored.record.key_epoch == 1
                assert stored.record.meter_key == derive_meter_key(VENDING_KEY, mid, 1).secret
                assert stored.token_window is not None
                assert stored.token_window.epoch == 1
                assert stored.next_keys == {}

        # 3. Old-epoch tokens are refused; tokens of the new epoch are credited.
        for u in SITE:
            mid = meter_id(u)
            seq = site.sim.keypad(u, stale[u])
            await eventually(site.acknowledged(u, seq), 20)
            refused = await eventually(site.events(u, "token_rejected"), 10)
            assert refused[-1]["reason"] == "wrong_meter_or_forged"
            fresh = await site.vend(u, "--epoch", "1", "--amount", "2.00")
            before = gw.meters[mid].state.ledger.balance
            site.sim.keypad(u, fresh)
            accepted = await eventually(site.events(u, "token_accepted"), 20, f"credit {u}")
            assert _details(accepted[-1])["token_id"] == f"{mid}:1:1"
            assert gw.meters[mid].state.ledger.balance >= before + 200 - 50  # less what ran


async def test_set_max_power_and_test_token_on_the_meter(site: Site) -> None:
    async with running_gateway(site.config()) as runner:
        gw = runner.gateway
        token = await site.vend(1, "--class", "set-max-power", "--value", "2500")
        site.sim.keypad(1, token)
        confirmed = await eventually(
            lambda: site.log.events(meter_id(1), "load_limit_confirmed"), 20, "read back"
        )
        assert _details(confirmed[0])["watts"] == 2500
        assert site.sim.state(1)["load_limit_w"] == 2500

        test = await site.vend(1, "--class", "test", "--value", "7")
        for _ in range(2):  # a test token uses no counter: it works again
            seq = site.sim.keypad(1, test)
            await eventually(site.acknowledged(1, seq), 20)
        shown = await eventually(lambda: site.log.events(meter_id(1), "test_token"), 10)
        assert _details(shown[0])["code"] == 7
        await eventually(
            lambda: site.sim.state(1)["holding_written"].get("1") == int(DisplayCode.TEST_TOKEN),
            10,
            "test code on the display",
        )
        assert gw.meters[meter_id(1)].window.highest == 1  # only the max-power token's counter
