"""The gateway polls, bills and switches DL/T 645 meters on the real simulator (RTU over TCP) beside a Modbus bus, with a real Mosquitto: trip at exhaustion, close after a top-up, close allowed and the customer's button for a meter that waits for it, protected supply on and off (3AH/3BH, off by a signed protect_off) and the alarm on and off (2AH/2BH) sent as remote control, time broadcast with a drifting clock reported, and an ESAM meter billed but never switched, with an event saying why; a relay that disobeys a trip is a relay mismatch, and a silent meter is reported, never charged nor cut off; the readings carry the measured values (voltage, current, power, power factor, frequency, export energy) rounded as the model's formats say, every measured_every-th poll, valid against the published schema."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from jsonschema import Draft202012Validator

from gateway.config import GatewayConfig
from gateway.core.meter_state import enrol
from gateway.core.states import CreditState
from gateway.dlt645_io import ESAM, control_secret
from gateway.store import MeterRecord, Store
from meter_sim.clock import ScaledClock
from meter_sim.dlt645_simulator import Dlt645Simulator
from meter_sim.simulator import Simulator
from protocol.command_auth import sign_command
from protocol.tokens.keys import derive_meter_key
from tests.integration.helpers import MessageLog, eventually, running_gateway, sim_start
from tests.support.dlt645_env import OPERATOR, PASSWORD, dlt645_bus
from tests.support.gateway_env import (
    HEADEND_KEY,
    VENDING_KEY,
    GatewayWorld,
    fast_settings,
    online_token,
)
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import TestClient

pytestmark = [pytest.mark.asyncio, pytest.mark.broker]

READING_SCHEMA = Draft202012Validator(
    json.loads((Path(__file__).parents[2] / "docs/schemas/reading.schema.json").read_text())
)
#: The decimals of each measured field in dlt645_single_phase (XXX.X V, XXX.XXX A, X.XXX,
#: XX.XX Hz) and the step of the whole ones (power in W, export energy in 10 Wh).
DECIMALS = {"voltage_v": 1, "current_a": 3, "power_factor": 3, "frequency_hz": 2}

SPEED = 60.0
SECRET = control_secret(PASSWORD, OPERATOR)  # the simulator's default password


def dlt_id(n: int) -> str:
    return f"DLT-{n:06d}"


@dataclass
class Site:
    world: GatewayWorld
    sim: Dlt645Simulator
    modbus: Simulator
    broker: Mosquitto
    headend: TestClient
    log: MessageLog

    def enrol(
        self,
        n: int,
        balance: int,
        *,
        secret: str | None = SECRET,
        protected: bool = False,
        **settings: Any,
    ) -> None:
        """Meter ``DLT-n`` at simulator meter n (address n), as meter-provision would."""
        mid = dlt_id(n)
        key = derive_meter_key(VENDING_KEY, mid, 0)
        state = enrol(
            mid,
            fast_settings(**settings),
            datetime.now(UTC),
            opening_balance=balance,
            protected=protected,
        )
        record = MeterRecord(
            mid, "dlt-1", n, "dlt645_single_phase", key.secret, 0, control_secret=secret
        )
        with Store.open(self.world.store_path) as store:
            store.add_meter(record, state, datetime.now(UTC))

    def config(self, dlt645: dict[str, Any] | None = None, **kw: Any) -> GatewayConfig:
        _, start = sim_start(SPEED)
        data = self.world.config_data(
            tcp=self.modbus.tcp_address,
            broker=(self.broker.host, self.broker.port),
            speed=SPEED,
            start=start,
            **kw,
        )
        settings = {"clock_drift_max_s": 120, **(dlt645 or {})}
        data["buses"].append(dlt645_bus(self.sim, dlt645=settings))
        return GatewayConfig.model_validate(data)


@pytest_asyncio.fixture
async def site(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[Site]:
    start_f, _ = sim_start(SPEED)
    async with (
        Dlt645Simulator.start(
            meters=4, seed=7, baud=9600, clock=ScaledClock(SPEED, start_f)
        ) as sim,
        Simulator.start(meters=1, seed=7, clock=ScaledClock(SPEED, start_f)) as modbus,
    ):
        world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
        with TestClient(mosquitto, "headend-test") as headend:
            headend.subscribe("prepaid/v1/gw-test/#")
            yield Site(world, sim, modbus, mosquitto, headend, MessageLog(headend))


def _dlt(site: Site, n: int) -> dict[str, Any]:
    state: dict[str, Any] = site.sim.state(n)["dlt645"]
    return state


async def test_dlt645_meters_are_billed_cut_off_and_reconnected_beside_modbus(site: Site) -> None:
    site.world.enrol([1], opening_balance=1_000_000)  # a Modbus meter on tcp-1
    site.enrol(1, 150)  # runs out: tripped, then closed again by an online top-up
    site.enrol(2, 150, reconnect_needs_button=True)  # waits for the customer's button
    site.enrol(3, 1_000_000, protected=True)  # protected supply: 3AH
    site.enrol(4, 150, secret=ESAM)  # read and billed, never switched
    for n in (1, 2, 4):
        site.sim.set_load(n, 6000)
    site.sim.set_clock_offset(3, 3600)  # an hour ahead: reported, then set by the broadcast
    async with running_gateway(site.config()) as runner:
        gw = runner.gateway
        await eventually(lambda: _dlt(site, 1)["relay_command_open"], 40, "meter 1 tripped")
        assert site.sim.state(1)["relay_closed"] is False
        assert gw.meters[dlt_id(1)].state.credit is CreditState.DISCONNECTED
        assert gw.meters[dlt_id(1)].state.ledger.charged > 0
        await eventually(lambda: _dlt(site, 2)["relay_command_open"], 40, "meter 2 tripped")
        # The low-credit alarm went on (2AH) on the way down.
        assert "alarm" in _dlt(site, 1)["commands"]
        # Protected supply is on the meter; its clock was reported and set.
        await eventually(lambda: _dlt(site, 3)["protected"], 20, "protect 3AH")
        drift = await eventually(lambda: site.log.events(dlt_id(3), "clock_drift"), 20, "drift")
        assert drift[0]["details"]["drift_s"] > 3000
        # The ESAM meter is billed down to nothing, its relay untouched, and we hear why.
        await eventually(
            lambda: gw.meters[dlt_id(4)].state.credit is CreditState.DISCONNECTED, 40, "esam"
        )
        why = await eventually(
            lambda: site.log.events(dlt_id(4), "relay_not_switched"), 20, "esam event"
        )
        assert "security module" in why[0]["reason"]
        assert site.sim.state(4)["relay_closed"] is True
        assert _dlt(site, 4)["commands"] == []

        # An online top-up closes meter 1 directly (1CH).
        await runner.mqtt_ready.wait()
        for n, counter in ((1, 1), (2, 1)):
            cmd = {
                "v": 1,
                "id": f"topup-{n}",
                "cmd": "topup",
                "token": online_token(n, counter, 8000, meter=dlt_id(n)),
            }
            site.headend.publish(
                f"prepaid/v1/gw-test/meters/{dlt_id(n)}/cmd", json.dumps(cmd).encode()
            )
        await eventually(lambda: site.sim.state(1)["relay_closed"], 20, "meter 1 closed")
        commands = _dlt(site, 1)["commands"]
        assert "close" in commands[commands.index("trip") :]
        # Credit is back above the alarm levels: the alarm goes off (2BH).
        await eventually(lambda: not _dlt(site, 1)["alarm"], 20, "meter 1 alarm off")
        assert "alarm_off" in _dlt(site, 1)["commands"]
        # The headend ends meter 3's protected supply (signed protect_off): 3BH.
        expires = (gw.clock() + timedelta(minutes=30)).isoformat()
        body = {"v": 1, "id": "unprotect-3", "cmd": "protect_off", "meter": dlt_id(3)}
        body |= {"gateway": "gw-test", "reason": "test", "expires": expires}
        signed = sign_command(body, "hq-1", HEADEND_KEY)
        site.headend.publish("prepaid/v1/gw-test/cmd", json.dumps(signed).encode())
        await eventually(lambda: not _dlt(site, 3)["protected"], 20, "meter 3 protect off")
        assert "protect_off" in _dlt(site, 3)["commands"]
        assert gw.meters[dlt_id(3)].state.credit is not CreditState.PROTECTED
        # Meter 2 is armed: close allowed (1BH), and the relay waits for the button.
        await eventually(lambda: _dlt(site, 2)["close_allowed"], 20, "meter 2 close allowed")
        assert gw.meters[dlt_id(2)].state.credit is CreditState.RECONNECT_ARMED
        assert site.sim.state(2)["relay_closed"] is False
        site.sim.press_button(2)
        await eventually(
            lambda: gw.meters[dlt_id(2)].state.credit is not CreditState.RECONNECT_ARMED,
            20,
            "the button press seen",
        )
        assert gw.meters[dlt_id(2)].state.relay_closed
        assert not site.log.events(dlt_id(2), "relay_mismatch")
        # The Modbus meter beside them was polled throughout.
        assert gw.meters["PE1-000001"].state.ledger.register_wh is not None


async def test_a_dlt645_relay_that_disobeys_or_a_silent_meter_is_reported_never_charged(
    site: Site,
) -> None:
    site.enrol(1, 150)  # its relay acknowledges the trip but stays closed
    site.enrol(2, 150)  # never answers
    site.sim.set_load(1, 6000)
    site.sim.set_load(2, 6000)
    site.sim.inject_fault(1, "relay_stuck")
    site.sim.inject_fault(2, "timeout")
    async with running_gateway(site.config()) as runner:
        gw = runner.gateway
        mismatch = await eventually(
            lambda: site.log.events(dlt_id(1), "relay_mismatch"), 40, "relay mismatch"
        )
        assert mismatch
        assert gw.meters[dlt_id(1)].state.credit is CreditState.DISCONNECTED
        assert _dlt(site, 1)["relay_command_open"] is True  # told to open...
        assert site.sim.state(1)["relay_closed"] is True  # ...and did not
        lost = await eventually(
            lambda: site.log.events(dlt_id(2), "communication_lost"), 40, "communication lost"
        )
        assert lost
        silent = gw.meters[dlt_id(2)].state
        assert silent.ledger.charged == 0
        assert silent.ledger.balance == 150
        assert silent.relay_closed
        assert _dlt(site, 2)["commands"] == []


async def test_dlt645_readings_carry_the_measured_values_every_nth_poll(site: Site) -> None:
    site.enrol(1, 1_000_000)
    site.sim.set_load(1, 2300)
    async with running_gateway(site.config(dlt645={"measured_every": 3})):
        readings = await eventually(
            lambda: (r := site.log.of(dlt_id(1), "reading"))[6:] and r, 40, "seven readings"
        )
    for reading in readings:
        READING_SCHEMA.validate(reading)
    full = [i for i, r in enumerate(readings) if "current_a" in r]
    assert full[:3] == [0, 3, 6]  # the first poll, then every third
    for i, reading in enumerate(readings[:7]):
        if i not in full:
            assert reading["voltage_v"] is None
            assert reading["power_w"] is None
            assert not {"current_a", "power_factor", "frequency_hz", "energy_export_wh"} & set(
                reading
            )
            continue
        for field, decimals in DECIMALS.items():
            value = Decimal(str(reading[field]))
            assert value == round(value, decimals), (field, value)
        assert 2200 <= reading["power_w"] <= 2400  # a whole number of W
        assert 200 <= reading["voltage_v"] <= 260
        assert 0 < reading["power_factor"] <= 1
        assert 49 <= reading["frequency_hz"] <= 61
        assert reading["energy_export_wh"] % 10 == 0  # XXXXXX.XX kWh, rounded down
