"""The order a gateway's MQTT session starts in, read from the broker's own log: every command
filter in one SUBSCRIBE, acknowledged before the retained `online` status. A headend that
sends a command when it sees `online` is then never ahead of the subscription, and a gateway
stopped at any point leaves a persistent session that queues commands for all of its filters
or for none (CI once lost a top-up sent to a meter's topic after a restart: the first session
had been stopped between two SUBSCRIBE packets). With Home Assistant discovery on, the
rebirth's retained balances go out beside the discovery configs, not after them all."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from meter_sim.clock import ScaledClock
from meter_sim.simulator import Simulator
from tests.integration.helpers import eventually, running_gateway, sim_start
from tests.support.gateway_env import GatewayWorld
from tests.support.mosquitto import Mosquitto

pytestmark = [pytest.mark.asyncio, pytest.mark.broker]

SPEED = 60.0


async def test_commands_are_subscribed_in_one_packet_before_online(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    start_f, start = sim_start(SPEED)
    async with Simulator.start(meters=1, seed=3, clock=ScaledClock(SPEED, start_f)) as sim:
        world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
        world.enrol([1], opening_balance=100_000)
        config = world.config(
            tcp=sim.tcp_address,
            broker=(mosquitto.host, mosquitto.port),
            speed=SPEED,
            start=start,
        )
        async with running_gateway(config) as runner:
            await asyncio.wait_for(runner.mqtt_ready.wait(), 10)
    lines = mosquitto.log().splitlines()
    subscribes = [i for i, line in enumerate(lines) if "Received SUBSCRIBE from gw-test" in line]
    online = next(
        i
        for i, line in enumerate(lines)
        if re.search(r"Received PUBLISH from gw-test .*'prepaid/v1/gw-test/status'", line)
    )
    assert len(subscribes) == 1, "\n".join(lines)
    suback = next(i for i, line in enumerate(lines) if "Sending SUBACK to gw-test" in line)
    filters = [line.split("\t", 1)[1] for line in lines[subscribes[0] + 1 : suback] if "\t" in line]
    assert filters == [
        "prepaid/v1/gw-test/cmd (QoS 1)",
        "prepaid/v1/gw-test/meters/+/cmd (QoS 1)",
    ]
    assert subscribes[0] < suback < online, "\n".join(lines)


async def test_the_rebirth_does_not_wait_for_home_assistant_discovery(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """docs/mqtt.md counts the time the retained view takes to be current from `online`:
    the first balance a new session republishes goes before the last discovery config."""
    start_f, start = sim_start(SPEED)
    async with Simulator.start(meters=2, seed=3, clock=ScaledClock(SPEED, start_f)) as sim:
        world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
        world.enrol([1, 2], opening_balance=100_000)
        config = world.config(
            tcp=sim.tcp_address,
            broker=(mosquitto.host, mosquitto.port),
            speed=SPEED,
            start=start,
            extra={"home_assistant": {"enabled": True}},
        )
        async with running_gateway(config) as runner:  # leaves balances to republish
            store = runner.gateway.store
            await eventually(
                lambda: all(store.latest_balance(m) for m in runner.gateway.meters),
                20,
                "each meter's balance acknowledged",
            )
        async with running_gateway(config) as runner:
            await eventually(lambda: runner.rebirth.last, 20, "the second session's rebirth")
            assert runner.rebirth.last is not None
            assert runner.rebirth.last.republished == 2
    lines = mosquitto.log().splitlines()
    second = [i for i, line in enumerate(lines) if "Received SUBSCRIBE from gw-test" in line][1]
    published = [line for line in lines[second:] if "Received PUBLISH from gw-test" in line]
    balances = [i for i, line in enumerate(published) if re.search(r"/balance', \.\.\. ", line)]
    configs = [i for i, line in enumerate(published) if "'homeassistant/" in line]
    assert balances, "\n".join(published)
    assert configs, "\n".join(published)
    assert balances[0] < configs[-1], "\n".join(published)
