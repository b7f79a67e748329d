"""A meter whose items the core cannot step is logged, counted in health and quarantined (one meter_quarantined event, its relay left as it is, no longer polled nor stepped) while the other meters are charged and enforced on."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.core_task import QUARANTINE_AFTER, CoreTask
from gateway.runtime import CoreItem, MeterRuntime, Pending
from meter_sim.clock import ScaledClock
from meter_sim.simulator import Simulator
from tests.integration.helpers import MessageLog, eventually, running_gateway, sim_start
from tests.support.gateway_env import GatewayWorld, meter_id
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import TestClient

pytestmark = [pytest.mark.asyncio, pytest.mark.broker]

SPEED = 60.0
#: M1 carries the injected bug; M2 has credit and a load (charged); M3 has none (cut off).
M1, M2, M3 = meter_id(1), meter_id(2), meter_id(3)


async def test_a_meter_the_core_cannot_step_is_quarantined_and_the_others_go_on(
    tmp_path: Path,
    mosquitto: Mosquitto,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No input makes the core raise, so a bug is injected: the per-item step raises for
    M1's items only. M1 has no credit, like M3: a working core would open both relays."""
    world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
    world.enrol([1, 3], opening_balance=0)
    world.enrol([2], opening_balance=1_000_000)
    stepped: Counter[str] = Counter()
    step_one = CoreTask._step_one

    def faulty(
        self: CoreTask, rt: MeterRuntime, item: CoreItem, pending: Pending, now: datetime
    ) -> Any:
        stepped[rt.meter_id] += 1
        if rt.meter_id == M1:
            raise RuntimeError("an injected bug in the core's step")
        return step_one(self, rt, item, pending, now)

    monkeypatch.setattr(CoreTask, "_step_one", faulty)
    caplog.set_level(logging.ERROR, logger="gateway.core_task")
    start_f, start = sim_start(SPEED)
    async with Simulator.start(meters=3, seed=5, clock=ScaledClock(SPEED, start_f)) as sim:
        for n in (1, 2, 3):
            sim.set_load(n, 3000)
        config = world.config(
            tcp=sim.tcp_address, broker=(mosquitto.host, mosquitto.port), speed=SPEED, start=start
        )
        with TestClient(mosquitto, "headend-boundary") as headend:
            headend.subscribe("prepaid/v1/gw-test/#")
            log = MessageLog(headend)
            async with running_gateway(config) as runner:
                gw = runner.gateway
                quarantined = await eventually(
                    lambda: log.events(M1, "meter_quarantined"), 15, "M1 quarantined"
                )
                assert len(quarantined) == 1
                assert "RuntimeError" in quarantined[0]["reason"]
                failures = [r for r in caplog.records if "could not be stepped" in r.getMessage()]
                assert len(failures) == QUARANTINE_AFTER, [r.getMessage() for r in failures]
                assert all(r.exc_info is not None for r in failures)  # with its traceback
                assert any("quarantined" in r.getMessage() for r in caplog.records)

                # The others go on: M3 (no credit) is cut off, M2 is charged.
                await eventually(lambda: sim.state(3)["relay_closed"] is False, 15, "M3 cut")
                balance_2 = gw.meters[M2].state.ledger.balance
                await eventually(
                    lambda: gw.meters[M2].state.ledger.balance < balance_2, 15, "M2 charged"
                )
                # M1 is neither polled nor stepped any more, its relay left as it was.
                polls_1, polls_2 = gw.meters[M1].polled.polls, gw.meters[M2].polled.polls
                await eventually(
                    lambda: gw.meters[M2].polled.polls >= polls_2 + 3, 15, "M2 polled on"
                )
                assert gw.meters[M1].polled.polls == polls_1
                assert stepped[M1] == QUARANTINE_AFTER
                assert sim.state(1)["relay_closed"] is True
                assert gw.meters[M1].quarantined

                health = runner.health()
                assert health.internal_errors == QUARANTINE_AFTER
                assert health.meters_quarantined == 1
                assert not runner.stop.is_set()
                print(
                    f"core boundary: {QUARANTINE_AFTER} step errors logged, M1 quarantined "
                    f"(relay left closed, polls stopped at {polls_1}), M2 charged, M3 cut off"
                )
