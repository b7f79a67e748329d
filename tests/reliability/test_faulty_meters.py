"""Meters that lie or garble, on a Modbus server of the test's own: NaN, infinite, 1e30 and negative floats, integers at their widest, energy going backwards, a relay status bit that disagrees with the coil, truncated, split, concatenated and short replies and replies naming another unit. The gateway runs on, charges nothing and raises no tamper, load-limit or keypad event from a bad frame, reports each bad meter once per episode, paces a lying relay's retries, and keeps reading the healthy meters."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from tests.integration.helpers import MessageLog, eventually, running_gateway
from tests.reliability.faulty_meter import (
    Fault,
    FaultyMeterServer,
    Unit,
    put,
    words_f32,
    words_u32,
    words_u64,
)
from tests.support.gateway_env import GatewayWorld, fast_settings, meter_id
from tests.support.gateway_process import first_readings
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import TestClient

pytestmark = [pytest.mark.asyncio, pytest.mark.broker, pytest.mark.reliability]

#: PE-1 input registers (the contract) and SDM120's float32 ones.
PE1_ENERGY, PE1_VOLTAGE, PE1_POWER, PE1_STATUS = 1, 9, 12, 16
SDM_VOLTAGE, SDM_POWER, SDM_ENERGY = 0x00, 0x0C, 0x48
ENERGY_WH = 1_000_000
RUN_S = 12.0

PE1_UNITS = {
    1: "healthy",
    2: "u64 energy at its widest",
    3: "energy going backwards",
    4: "truncated replies",
    5: "split replies",
    6: "concatenated replies",
    7: "replies naming another unit",
    8: "relay status bit lies",
    9: "short replies",
    10: "i32 power at its widest",
}
SDM_UNITS = {
    11: ("1e30 kWh", 1e30, 230.0, 100.0),
    12: ("NaN voltage", 1000.0, math.nan, 100.0),
    13: ("infinite power", 1000.0, 230.0, math.inf),
    14: ("negative energy", -5.0, 230.0, 100.0),
}
INVALID = {2, 10, 11, 12, 13, 14}


def _pe1(energy: int = ENERGY_WH, power: int = 0) -> Unit:
    unit = Unit(status_address=PE1_STATUS)
    put(unit.input, 0, [1])
    put(unit.input, PE1_ENERGY, words_u64(energy))
    put(unit.input, PE1_VOLTAGE, [2300])
    put(unit.input, PE1_POWER, words_u32(power & 0xFFFF_FFFF))
    put(unit.input, PE1_STATUS, [0b1])  # relay closed, nothing pending
    unit.coils[0] = 1
    return unit


def _sdm(energy_kwh: float, volts: float, watts: float) -> Unit:
    unit = Unit()
    put(unit.input, SDM_VOLTAGE, words_f32(volts))
    put(unit.input, SDM_POWER, words_f32(watts))
    put(unit.input, SDM_ENERGY, words_f32(energy_kwh))
    return unit


async def test_faulty_meters_never_stop_enforcement_nor_charge(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
    settings = fast_settings()
    world.enrol(list(PE1_UNITS), opening_balance=5_000, settings=settings)
    world.enrol(list(SDM_UNITS), opening_balance=5_000, settings=settings, map_name="sdm120")
    async with FaultyMeterServer() as server:
        for n in PE1_UNITS:
            server.units[n] = _pe1()
        for n in SDM_UNITS:
            # A sane first reading (the baseline), the lie after it.
            server.units[n] = _sdm(1000.0, 230.0, 100.0)
        config = world.config(
            tcp=server.address, broker=(mosquitto.host, mosquitto.port), interval=0.2
        )
        with TestClient(mosquitto, "headend") as headend:
            headend.subscribe("prepaid/v1/gw-test/#")
            log = MessageLog(headend)
            async with running_gateway(config) as runner:
                gw = runner.gateway
                await first_readings(gw)
                before = {m: rt.state.ledger.balance for m, rt in gw.meters.items()}
                server.units[2] = _pe1(energy=2**64 - 1)
                put(server.units[3].input, PE1_ENERGY, words_u64(ENERGY_WH - 500))
                server.units[4].fault = Fault.TRUNCATE
                server.units[5].fault = Fault.SPLIT
                server.units[6].fault = Fault.CONCAT
                server.units[7].fault = Fault.OTHER_UNIT
                server.units[8].status_relay_lies = False
                server.units[9].fault = Fault.SHORT
                server.units[10] = _pe1(power=-(2**31))
                for n, (_what, kwh, volts, watts) in SDM_UNITS.items():
                    server.units[n] = _sdm(kwh, volts, watts)
                reads_1 = gw.meters[meter_id(1)].polled.polls
                # The faults run for a while (nothing to await); the last third is the
                # steady state, once every episode has started.
                await asyncio.sleep(RUN_S * 2 / 3)
                settled = len(log.events_all())
                await asyncio.sleep(RUN_S / 3)
                steady = len(log.events_all()) - settled

                assert not runner.stop.is_set()
                assert gw.meters[meter_id(1)].polled.polls > reads_1 + RUN_S  # healthy: read on
                after = {m: rt.state.ledger.balance for m, rt in gw.meters.items()}
                assert after == before, "a bad frame moved money"
                messages = log.pull()
                charged = [
                    m["charged"] for t, m in messages if t.endswith("/reading") and m["charged"]
                ]
                assert charged == [], charged
                events = [m for t, m in messages if t.endswith("/event")]
                names = [(m["meter"], m["event"]) for m in events]
                forbidden = {"tamper", "load_limit", "token_rejected", "keypad_lockout_alarm"}
                assert not [n for n in names if n[1] in forbidden], names
                mismatches = [m for m, e in names if e == "relay_mismatch"]
                assert mismatches == [meter_id(8)], names
                invalid = sorted(m for m, e in names if e == "reading_invalid")
                assert invalid == sorted(meter_id(n) for n in INVALID), names
                assert [m for m, e in names if e == "register_backwards"] == [meter_id(3)]
                assert not [m for m, e in names if e == "meter_quarantined"], names
                lying = server.units[8]
                relay_writes = [w for w in lying.writes if w[0] == 5]
                # doubling from 2 s: at most one per doubling in the run, never one a poll
                assert 1 <= len(relay_writes) <= 1 + math.log2(RUN_S), relay_writes
                # health counts the one disagreement under way and its paced retries.
                health = runner.health()
                assert health.relay_mismatches == 1, health
                assert 1 <= health.relay_retries <= 1 + math.log2(RUN_S), health
                assert (health.internal_errors, health.meters_quarantined) == (0, 0), health
                # Once per episode, not per poll: in the steady state the faulty meters
                # raise (almost) nothing more.
                assert steady <= 2, log.events_all()[settled:]
                print(
                    f"faulty meters: {len(PE1_UNITS) + len(SDM_UNITS)} meters, "
                    f"{sum(server.counts.values())} replies ({dict(server.counts)}), "
                    f"0 crashes, 0 charged, {len(events)} events in {RUN_S:.0f} s, "
                    f"{steady} in the last {RUN_S / 3:.0f} s (~{steady * 3600 * 3 / RUN_S:.0f} "
                    f"an hour), lying relay written {len(relay_writes)} times"
                )
                # Healed: the lying relay's status agrees again; the episode ends once.
                lying.status_relay_lies = None
                await eventually(
                    lambda: any(
                        m.get("event") == "relay_mismatch_cleared" for m in log.events(meter_id(8))
                    ),
                    10,
                    "relay_mismatch_cleared",
                )
