"""Every shipped register map billed end to end (real simulator, real gateway process, real Mosquitto): the balance moves by the tariff for the energy the meter's readings report, nothing is held as implausible (an EM24's 100 Wh steps at a 5 s poll), and each reading carries the map's published points rounded to their resolution. A meter switched by a relay module gets bypass detection and relay-module faults like a meter's own relay, and once cut off is polled now and then, at once after a top-up."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway.config import GatewayConfig
from gateway.core.meter_state import enrol
from gateway.measured import reading_fields
from gateway.modbus_port import TcpPort
from gateway.store import MeterRecord, Store
from meter_sim.clock import ScaledClock
from meter_sim.simulator import Simulator
from protocol import modbus
from protocol.regmap import load_map
from protocol.tokens.keys import derive_meter_key
from tests.integration.helpers import MessageLog, eventually, running_gateway, sim_start
from tests.support.gateway_env import (
    VENDING_KEY,
    GatewayWorld,
    fast_settings,
    meter_id,
    online_token,
)
from tests.support.gateway_process import GatewayProcess
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import TestClient

pytestmark = [pytest.mark.asyncio, pytest.mark.broker]

M1 = meter_id(1)
OPENING = 1_000_000
#: 1 minor unit a Wh: the charge for the energy is the energy, exactly.
PRICE_PER_KWH = "1000"
#: 5 s of meter time between polls (0.25 s real at 20x), as in the EM24 report.
SPEED = 20.0
POLL_S = 0.25
#: enough energy for four of an EM24's 100 Wh steps
ENERGY_WH = 400
#: the poll interval of a meter cut off (real seconds; the normal one is 0.5 s)
CUT_OFF_S = 5.0


def _moved(readings: list[dict[str, Any]]) -> bool:
    energy = [r["energy_import_wh"] for r in readings]
    return len(energy) > 1 and energy[-1] - energy[0] >= ENERGY_WH


@pytest.mark.slow
@pytest.mark.parametrize("map_name", ["pe1", "sdm120", "sdm630", "em24", "iem3000"])
async def test_every_shipped_map_is_billed_end_to_end(
    tmp_path: Path, mosquitto: Mosquitto, map_name: str
) -> None:
    start_f, start = sim_start(SPEED)
    async with Simulator.start(
        meters=1, map_name=map_name, seed=11, clock=ScaledClock(SPEED, start_f)
    ) as sim:
        sim.set_load(1, 10_000)
        world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
        settings = fast_settings(
            PRICE_PER_KWH, rated_power_w=12_000, plausibility_margin_percent=10
        )
        world.enrol([1], opening_balance=OPENING, settings=settings, map_name=map_name)
        data = world.config_data(
            tcp=sim.tcp_address,
            broker=(mosquitto.host, mosquitto.port),
            speed=SPEED,
            start=start,
            interval=POLL_S,
        )
        data["polling"].update(min_interval_s=POLL_S, max_interval_s=POLL_S)
        gateway = GatewayProcess(world.write_config_data(data), tmp_path / "gateway.log")
        with TestClient(mosquitto, f"headend-{map_name}") as headend:
            headend.subscribe(f"prepaid/v1/gw-test/meters/{M1}/#")
            log = MessageLog(headend)
            gateway.start()
            try:
                await eventually(lambda: _moved(log.of(M1, "reading")), 60, "energy moving")
                readings = log.of(M1, "reading")
                charged = sum(r["charged"] for r in readings[1:])
                # the balance message of the last reading's step
                await eventually(
                    lambda: any(b["balance"] == OPENING - charged for b in log.of(M1, "balance")),
                    10,
                    f"balance {OPENING - charged}",
                )
            finally:
                assert gateway.stop() == 0
    assert log.events(M1, "energy_held") == []
    assert charged == readings[-1]["energy_import_wh"] - readings[0]["energy_import_wh"]
    assert charged >= ENERGY_WH
    measured = set(reading_fields(load_map(map_name))) - {"voltage_v"}
    for reading in readings:
        assert measured <= set(reading), reading
        # published at the point's resolution (0.1 V), not a float32's stray digits
        assert Decimal(str(reading["voltage_v"])) % Decimal("0.1") == 0, reading


async def _open_coil_by_hand(address: tuple[str, int], unit: int) -> None:
    """Someone switches the relay module's contactor off at the module."""
    port = TcpPort("by-hand", address[0], address[1], concurrency=1, timeout=1.0)
    try:
        await port.request(modbus.write_coil(unit, 0, False))
    finally:
        await port.close()


async def test_a_relay_module_meter_is_watched_like_a_meter_relay(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """An SDM120 switched by coil 0 of relay module unit 5: energy while the module reads
    open is a bypass; a contactor opened at the module is a relay mismatch the gateway
    puts right, a module that stops answering is reported; cut off, the meter is read
    now and then, and at once after a top-up."""
    speed = 60.0
    start_f, start = sim_start(speed)
    clock = ScaledClock(speed, start_f)
    async with (
        Simulator.start(meters=1, map_name="sdm120", seed=3, clock=clock) as meters,
        Simulator.start(meters=5, map_name="pe1", seed=4, clock=clock) as relays,
    ):
        meters.set_load(1, 6000)  # wired around the contactor: it keeps drawing when cut
        world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
        now = datetime.now(UTC)
        key = derive_meter_key(VENDING_KEY, M1, 0)
        with Store.open(world.store_path) as store:
            store.add_meter(
                MeterRecord(M1, "tcp-1", 1, "sdm120", key.secret, 0, relay_output="relays:5:0"),
                enrol(M1, fast_settings(), now, opening_balance=100),
                now,
            )
        data = world.config_data(
            tcp=meters.tcp_address,
            broker=(mosquitto.host, mosquitto.port),
            speed=speed,
            start=start,
        )
        host, port = relays.tcp_address
        data["buses"].append({"name": "relays", "kind": "tcp", "host": host, "port": port})
        data["polling"]["cutoff_interval_s"] = CUT_OFF_S
        with TestClient(mosquitto, "headend-relay-module") as headend:
            headend.subscribe("prepaid/v1/gw-test/#")
            log = MessageLog(headend)
            async with running_gateway(GatewayConfig.model_validate(data)) as runner:
                gw = runner.gateway
                rt = gw.meters[M1]
                await eventually(lambda: relays.state(5)["relay_closed"] is False, 40, "cut-off")
                bypass = await eventually(
                    lambda: [e for e in log.events(M1, "tamper") if "bypass" in e["reason"]],
                    3 * CUT_OFF_S,
                    "bypass tamper event",
                )
                assert bypass[0]["details"]["energy_wh"] > 0
                assert rt.polled.interval == CUT_OFF_S  # cut off: read now and then
                # A top-up too small to reconnect: the meter is read at once all the same,
                # long before its next reading is due.
                await eventually(runner.mqtt_ready.is_set, 10, "mqtt")
                polls = rt.polled.polls
                await eventually(lambda: rt.polled.polls > polls, 2 * CUT_OFF_S, "a reading")
                polls = rt.polled.polls
                cmd = {"v": 1, "id": "topup-1", "cmd": "topup", "token": online_token(1, 1, 1)}
                headend.publish(f"prepaid/v1/gw-test/meters/{M1}/cmd", json.dumps(cmd).encode())
                await eventually(lambda: rt.polled.polls > polls, CUT_OFF_S / 3, "one at once")
                # Enough to reconnect: the module's coil closes, the interval shortens.
                cmd = {
                    "v": 1,
                    "id": "topup-2",
                    "cmd": "topup",
                    "token": online_token(1, 2, 500_000),
                }
                headend.publish(f"prepaid/v1/gw-test/meters/{M1}/cmd", json.dumps(cmd).encode())
                await eventually(lambda: relays.state(5)["relay_closed"] is True, 20, "reconnect")
                await eventually(lambda: rt.polled.interval < CUT_OFF_S, 10, "normal polling")
                # The contactor opened at the module: a relay fault, put right by the gateway.
                await _open_coil_by_hand(relays.tcp_address, 5)
                mismatch = await eventually(
                    lambda: log.events(M1, "relay_mismatch"), 20, "relay_mismatch"
                )
                assert mismatch[0]["details"]["desired_closed"] is True
                assert mismatch[0]["details"]["observed_closed"] is False
                await eventually(
                    lambda: relays.state(5)["relay_closed"] is True, 20, "closed again"
                )
                await eventually(
                    lambda: log.events(M1, "relay_mismatch_cleared"), 20, "mismatch cleared"
                )
                # The module stops answering: reported once, the meter still billed.
                charged = rt.state.ledger.charged
                relays.inject_fault(5, "timeout")
                unreachable = await eventually(
                    lambda: log.events(M1, "relay_unreachable"), 20, "relay_unreachable"
                )
                await eventually(lambda: rt.state.ledger.charged > charged, 20, "still billed")
                assert len(log.events(M1, "relay_unreachable")) == 1
                assert unreachable[0]["reason"] == "relay_unreadable"
                relays.clear_faults(5)
