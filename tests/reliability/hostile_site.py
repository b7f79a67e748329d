"""A site to attack from outside: a real `meter-gateway run` process on mutual TLS to a
Mosquitto that enforces packaging/mosquitto-acl.template, the simulator, and a headend
client holding the headend's certificate. Checks read only the wire, the gateway's log
and (read-only) its store, as a stranger's checks would."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from meter_sim.clock import ScaledClock
from meter_sim.simulator import Simulator
from protocol.command_auth import sign_command
from tests.integration.helpers import MessageLog, eventually, sim_start
from tests.support.gateway_env import HEADEND_KEY, GatewayWorld, meter_id, online_token, to_toml
from tests.support.gateway_process import GatewayProcess
from tests.support.mosquitto import Mosquitto, TlsMaterial
from tests.support.mqtt import TestClient
from tests.support.pki import TestCA

TEMPLATE = Path(__file__).resolve().parents[2] / "packaging" / "mosquitto-acl.template"
GW = "gw-test"
ROOT = f"prepaid/v1/{GW}"
REPLIES = "headend/hq/replies"
FALLBACK = f"{ROOT}/cmd/result"


@dataclass
class HostileSite:
    folder: Path
    world: GatewayWorld
    broker: Mosquitto
    sim: Simulator
    headend: TestClient
    log: MessageLog
    config_path: Path
    gateway: GatewayProcess = field(init=False)
    counter: int = 100
    sent: int = 0
    _online_from: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.gateway = GatewayProcess(self.config_path, self.folder / "gateway.log")

    @property
    def gateway_log(self) -> Path:
        return self.gateway.log

    def start_gateway(self) -> None:
        self._online_from = len(self.log.pull())
        self.gateway.start()

    async def wait_online(self) -> None:
        """Until the gateway started last publishes its retained status ``online``."""

        def online() -> bool:
            if not self.alive():
                raise AssertionError(f"gateway exited:\n{self.gateway.text()[-3000:]}")
            return any(
                t == f"{ROOT}/status" and m.get("state") == "online"
                for t, m in self.log.pull()[self._online_from :]
            )

        await eventually(online, 20, "the gateway online")

    def stop_gateway(self) -> None:
        self.gateway.stop()

    def alive(self) -> bool:
        return self.gateway.alive()

    def sessions(self) -> int:
        """MQTT sessions the gateway opened (one per connect)."""
        return self.gateway.logged("MQTT connected to")

    def tracebacks(self) -> int:
        return self.gateway.logged("Traceback")

    def balances(self) -> dict[str, tuple[int, int, str]]:
        """(balance, topups, credit state) per meter, read-only from the store."""
        db = sqlite3.connect(f"file:{self.world.store_path}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT meter_id, balance, credit_state, state_json FROM ledgers")
            return {m: (b, json.loads(s)["ledger"]["topups"], c) for m, b, c, s in rows.fetchall()}
        finally:
            db.close()

    def results(self) -> list[tuple[str, dict[str, Any]]]:
        return [(t, m) for t, m in self.log.pull() if t == FALLBACK or t.startswith("headend/")]

    def command(
        self,
        body: dict[str, Any] | bytes,
        *,
        meter: int | None = 1,
        response_topic: str | None = REPLIES,
        correlation: bytes | None = None,
    ) -> None:
        topic = f"{ROOT}/meters/{meter_id(meter)}/cmd" if meter is not None else f"{ROOT}/cmd"
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.headend.publish(topic, payload, response_topic=response_topic, correlation=correlation)
        self.sent += 1

    async def result_of(self, request_id: str, within: float = 10.0) -> dict[str, Any]:
        found = await eventually(
            lambda: [m for _t, m in self.results() if m.get("id") == request_id],
            within,
            f"the result of {request_id}",
        )
        return dict(found[-1])

    def signed(self, body: dict[str, Any], *, expires: datetime | None = None) -> dict[str, Any]:
        expires = expires or datetime.now(UTC) + timedelta(minutes=10)
        return sign_command(body | {"expires": expires.isoformat()}, "hq-1", HEADEND_KEY)

    async def genuine_top_up(self, unit: int = 1, amount: int = 1000) -> dict[str, Any]:
        """A real online purchase still works: credited, result ok."""
        self.counter += 1
        request_id = f"genuine-{self.counter}"
        body = {
            "v": 1,
            "id": request_id,
            "cmd": "topup",
            "token": online_token(unit, self.counter, amount),
        }
        self.command(body, meter=unit)
        result = await self.result_of(request_id, 15)
        assert result["ok"] is True, result
        assert result["details"]["credited"] == amount
        return result


@asynccontextmanager
async def hostile_site(
    folder: Path,
    *,
    meters: int = 2,
    mqtt: dict[str, Any] | None = None,
    prefill: Any = None,
) -> AsyncIterator[HostileSite]:
    """The whole site, the gateway started and online; stopped at the end."""
    ca = TestCA(folder)
    material = TlsMaterial(ca=ca.cert_path)
    for cn in (GW, "headend"):
        material.clients[cn] = ca.issue(cn, server=False)
    broker = Mosquitto(
        folder,
        tls=material,
        server_cert=ca.issue("localhost", server=True),
        acl=TEMPLATE.read_text(),
    )
    broker.start()
    store_dir = folder / "store"
    store_dir.mkdir(mode=0o700)
    world = GatewayWorld(folder, store_dir / "gateway.db")
    world.enrol(list(range(1, meters + 1)), opening_balance=5_000)
    if prefill is not None:
        prefill(world)
    start_f, start = sim_start(1.0)
    try:
        async with Simulator.start(meters=meters, seed=7, clock=ScaledClock(1.0, start_f)) as sim:
            for unit in range(1, meters + 1):
                sim.set_load(unit, 0)
            data = world.config_data(
                tcp=sim.tcp_address, broker=(broker.host, broker.port), speed=1.0, start=start
            )
            gw_files = material.clients[GW]
            data["mqtt"]["brokers"][0]["tls"] = True
            data["mqtt"].update(
                ca_file=str(ca.cert_path),
                cert_file=str(gw_files.cert),
                key_file=str(gw_files.key),
                **(mqtt or {}),
            )
            config_path = folder / "gateway.toml"
            config_path.write_text(to_toml(data))
            os.chmod(config_path, 0o600)
            with TestClient(broker, "hq", cert_name="headend") as headend:
                headend.subscribe("headend/#")
                headend.subscribe(f"{ROOT}/#")
                site = HostileSite(
                    folder, world, broker, sim, headend, MessageLog(headend), config_path
                )
                site.start_gateway()
                try:
                    await site.wait_online()
                    yield site
                finally:
                    site.stop_gateway()
    finally:
        broker.stop()
