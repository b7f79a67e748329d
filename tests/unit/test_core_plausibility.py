"""The plausibility rule accounts for the register's resolution and the elapsed time: an EM24 counting in 100 Wh steps, polled every 5 s on a 12 kW meter, is billed for each step the previous readings held back, while a jump no load could make is still held."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from gateway.core.commands import Publish
from gateway.core.events import ReadingReceived
from gateway.core.ledger import max_plausible_wh
from gateway.core.meter_state import MeterState, enrol
from gateway.core.settings import MeterSettings
from gateway.core.step import step
from gateway.core.tariff import FlatPricing, Tariff, TariffSchedule

T0 = datetime(2026, 12, 7, 8, tzinfo=UTC)
EM24_STEP_WH = 100


def em24_meter() -> MeterState:
    settings = MeterSettings(
        TariffSchedule.single(Tariff("KES", FlatPricing(Decimal(20)))), rated_power_w=12_000
    )
    return enrol("em24-1", settings, T0 - timedelta(hours=1), opening_balance=50_000)


def events_of(commands: Sequence[object]) -> list[str]:
    return [str(c.body["event"]) for c in commands if isinstance(c, Publish) and c.kind == "event"]


def test_a_100_wh_step_after_5_s_at_12_kw_is_plausible() -> None:
    assert max_plausible_wh(12_000, timedelta(seconds=5), 10, resolution_wh=100) >= 100
    assert max_plausible_wh(12_000, timedelta(seconds=5), 10) < 100  # the old rule: held
    assert max_plausible_wh(3600, timedelta(hours=1), 0, resolution_wh=1) == 3601


def test_an_em24_polled_every_5_s_is_billed_for_every_step() -> None:
    """12 kW for 10 minutes: the register moves 100 Wh about every 30 s; each step is
    billed (0.1 kWh at 20 a kWh = 2 minor units), none held."""
    state = em24_meter()
    used = Decimal(0)
    charged = 0
    held: list[str] = []
    for n in range(121):
        at = T0 + timedelta(seconds=5 * n)
        register = int(used // EM24_STEP_WH) * EM24_STEP_WH  # what the EM24 shows
        reading = ReadingReceived("em24-1", 10_000_000 + register, at, power_w=12_000,
                                  resolution_wh=EM24_STEP_WH)  # fmt: skip
        state, commands = step(state, reading, at)
        charged += sum(
            int(str(c.body["charged"]))
            for c in commands
            if isinstance(c, Publish) and c.kind == "reading"
        )
        held += [e for e in events_of(commands) if e == "energy_held"]
        used += Decimal(12_000 * 5) / 3600
    assert held == []
    assert state.ledger.held_wh == 0
    assert charged == 2 * 20  # 2,000 Wh in 100 Wh steps, 2 minor units each
    assert state.ledger.balance == 50_000 - charged


def test_a_jump_beyond_the_rated_power_and_one_step_is_still_held() -> None:
    state = em24_meter()
    state, _ = step(state, ReadingReceived("em24-1", 1_000, T0, resolution_wh=100), T0)
    later = T0 + timedelta(seconds=5)
    state, commands = step(state, ReadingReceived("em24-1", 1_200, later, resolution_wh=100), later)
    assert "energy_held" in events_of(commands)
    assert state.ledger.held_wh == 200
