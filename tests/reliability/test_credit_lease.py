"""Cutting the bus is not free electricity: a PE-1 meter the gateway can no longer reach opens its relay by itself once its credit lease (the energy its credit buys, plus a few polls' grace) is used, and closes again when the bus is back and the customer tops up; a meter that cannot cut itself (no lease register) and stops answering near exhaustion raises a communication_lost_while_exhausted alarm instead."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.core.lease import lease_allowance_wh
from gateway.meter_actions import LEASE_GRACE_POLLS
from meter_sim.clock import ScaledClock
from meter_sim.simulator import Simulator
from tests.integration.helpers import MessageLog, eventually, running_gateway, sim_start
from tests.reliability.faulty_meter import Fault, FaultyMeterServer, Unit, put, words_f32
from tests.support.gateway_env import GatewayWorld, fast_settings, meter_id
from tests.support.gateway_process import first_readings
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import TestClient

pytestmark = [pytest.mark.asyncio, pytest.mark.broker, pytest.mark.reliability]

SPEED = 60.0
M1, M2 = meter_id(1), meter_id(2)


async def test_a_meter_cut_off_from_the_gateway_opens_within_its_lease(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
    world.enrol([1], opening_balance=60)  # 0.6 kWh at 100/kWh: minutes at 6 kW
    world.enrol([2], opening_balance=1_000_000)
    start_f, start = sim_start(SPEED)
    async with Simulator.start(meters=2, seed=4, clock=ScaledClock(SPEED, start_f)) as sim:
        sim.set_load(1, 6000)
        sim.set_load(2, 200)
        config = world.config(
            tcp=sim.tcp_address, broker=(mosquitto.host, mosquitto.port), speed=SPEED, start=start
        )
        with TestClient(mosquitto, "headend") as headend:
            headend.subscribe("prepaid/v1/gw-test/#")
            log = MessageLog(headend)
            async with running_gateway(config) as runner:
                gw = runner.gateway
                granted = await eventually(
                    lambda: sim.state(1)["lease_wh"], 10, "a lease granted to meter 1"
                )
                # The grant is the credit's energy plus the grace, no more.
                grace_s = LEASE_GRACE_POLLS * config.polling.interval_s * SPEED
                wanted = lease_allowance_wh(gw.meters[M1].state, gw.clock(), grace_s)
                assert wanted is not None
                assert granted <= wanted + 100  # the gateway's view moved on since
                sim.inject_fault(1, "timeout")  # the bus to meter 1 is cut
                cut_at = sim.state(1)["energy_import_wh"]
                tripped = await eventually(
                    lambda: (s := sim.state(1))["lease_tripped"] and s, 30, "the lease trip"
                )
                assert tripped["relay_closed"] is False
                assert tripped["status"] & 0x80  # PE-1 status bit 7: lease expired
                delivered = tripped["energy_import_wh"] - cut_at
                assert delivered <= granted, (delivered, granted)
                # No alarm for a meter that cuts itself; the other meter was never touched.
                await eventually(lambda: log.events(M1, "communication_lost"), 20, "comm lost")
                assert not log.events(M1, "communication_lost_while_exhausted")
                assert sim.state(2)["relay_closed"] is True

                sim.clear_faults(1)  # the bus is mended: the gateway bills what was used
                await eventually(
                    lambda: gw.meters[M1].state.ledger.balance <= 0, 20, "the used energy billed"
                )
                seq = sim.keypad(1, world.keypad_token(1, 5_000))
                await eventually(lambda: sim.state(1)["keypad_ack"] == seq, 20, "top-up typed")
                closed = await eventually(
                    lambda: (s := sim.state(1))["relay_closed"] and s, 20, "closed again"
                )
                assert closed["lease_tripped"] is False
                assert closed["lease_wh"] > 0
                print(
                    f"credit lease: granted {granted} Wh, delivered {delivered} Wh with the bus "
                    f"cut, then opened by itself; closed again after the top-up"
                )


async def test_a_meter_without_a_lease_that_goes_quiet_near_exhaustion_raises_an_alarm(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
    near = fast_settings()  # alarm2 = 200: a balance of 100 is very low credit
    world.enrol([1], opening_balance=100, settings=near, map_name="sdm120")
    world.enrol([2], opening_balance=100_000, settings=near, map_name="sdm120")
    async with FaultyMeterServer() as server:
        for n in (1, 2):
            unit = Unit()
            put(unit.input, 0x48, words_f32(1000.0))
            put(unit.input, 0x00, words_f32(230.0))
            put(unit.input, 0x0C, words_f32(0.0))
            server.units[n] = unit
        config = world.config(tcp=server.address, broker=(mosquitto.host, mosquitto.port))
        with TestClient(mosquitto, "headend") as headend:
            headend.subscribe("prepaid/v1/gw-test/#")
            log = MessageLog(headend)
            async with running_gateway(config) as runner:
                gw = runner.gateway
                await first_readings(gw)
                server.units[1].fault = Fault.SILENT
                server.units[2].fault = Fault.SILENT
                alarm = await eventually(
                    lambda: log.events(M1, "communication_lost_while_exhausted"), 20, "the alarm"
                )
                assert alarm[0]["details"]["credit_state"] == "very_low_credit"
                await eventually(lambda: log.events(M2, "communication_lost"), 20, "M2 lost")
                assert not log.events(M2, "communication_lost_while_exhausted")  # plenty left
