"""RTU bus faults (bad CRC, garbled and truncated frames, exception and slow replies, a dead meter) on an RS-485 line emulated at 115200 baud: nobody is disconnected, every charge matches the energy registers exactly (nothing charged from a bad frame or twice), no reply is taken for another meter's, and healthy meters keep their poll interval within a bound while one meter is dead."""

from __future__ import annotations

from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import pytest

from meter_sim.clock import ScaledClock
from meter_sim.simulator import Simulator
from tests.integration.helpers import eventually, running_gateway, sim_start
from tests.reliability.test_bus_faults import _watch_read_gaps
from tests.support.gateway_env import GatewayWorld, meter_id

pytestmark = [pytest.mark.asyncio, pytest.mark.reliability]

SPEED = 60.0
METERS = 6
DEAD = 6
PRICE_PER_WH = Fraction(100, 1000)
#: a healthy meter's longest gap between trusted readings (real seconds) while one meter
#: on the serial line is dead: the line is shared, so the dead meter's timeout and guard
#: time come on top of the interval
GAP_BOUND_S = 3.0
RUN_S = 12.0


async def test_rtu_faults_charge_nothing_twice_and_disconnect_nobody(tmp_path: Path) -> None:
    world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
    units = range(1, METERS + 1)
    world.enrol(units, bus="rtu-1", opening_balance=1_000_000)
    start_f, _ = sim_start(SPEED)
    async with Simulator.start(
        meters=METERS,
        seed=8,
        clock=ScaledClock(SPEED, start_f),
        tcp_port=None,
        rtu_tcp_port=0,
        baud=115200,
    ) as sim:
        assert sim.rtu_tcp_address is not None
        for unit in units:
            sim.set_load(unit, 0)
        baseline = {u: int(sim.state(u)["energy_import_wh"]) for u in units}
        config = world.config(
            rtu="socket://{}:{}".format(*sim.rtu_tcp_address),
            speed=SPEED,
            start=datetime.fromtimestamp(sim.clock.now(), UTC),
            interval=0.5,
            timeout=0.2,
        )
        async with running_gateway(config) as runner:
            gw = runner.gateway
            await eventually(
                lambda: all(
                    gw.meters[meter_id(u)].state.ledger.register_wh is not None for u in units
                ),
                30,
                "baselines",
            )
            for unit in units:
                sim.set_load(unit, 3000)
            sim.inject_fault(DEAD, "timeout")
            gaps = await _watch_read_gaps(gw, [u for u in units if u != DEAD], RUN_S / 2)
            for kind, p in (
                ("bad_crc", 0.06),
                ("garbled", 0.06),
                ("truncated", 0.04),
                ("exception", 0.03),
            ):
                sim.inject_fault("all", kind, probability=p)
            sim.inject_fault("all", "slow", probability=0.03, delay=0.3)
            await _watch_read_gaps(gw, [u for u in units if u != DEAD], RUN_S)
            sim.clear_faults("all")
            sim.clear_faults(DEAD)
            for unit in units:
                sim.set_load(unit, 0)
            final = {u: int(sim.state(u)["energy_import_wh"]) for u in units}
            await eventually(
                lambda: all(
                    gw.meters[meter_id(u)].state.ledger.register_wh == final[u] for u in units
                ),
                30,
                "final registers read",
            )
            assert gw.counters.poll_failures > 10  # the faults really happened
            for unit in units:
                assert sim.state(unit)["relay_closed"] is True, unit
                ledger = gw.meters[meter_id(unit)].state.ledger
                exact = (final[unit] - baseline[unit]) * PRICE_PER_WH
                assert ledger.held_wh == 0, unit
                assert abs(ledger.charged - exact) <= Fraction(1, 2), (unit, ledger, exact)
    worst = max(gaps.values())
    assert worst < GAP_BOUND_S, gaps
    print(f"RTU faults: one meter dead: worst healthy gap {worst:.2f} s (bound {GAP_BOUND_S} s)")
