"""Meter physics is exact and honest: energy independent of how time is stepped, relay and bypass rules, load-limit trip at 10 s, keypad sequence, P = V*I*PF, seeded loads."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meter_sim.errors import ControlError
from meter_sim.physics import (
    CustomerClass,
    MeterModel,
    Tamper,
    round_div,
)

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@given(
    steps=st.lists(st.integers(min_value=0, max_value=400_000), min_size=1, max_size=60),
    seed=st.integers(0, 2**32),
)
def test_energy_does_not_depend_on_how_time_is_stepped(steps: list[int], seed: int) -> None:
    stepped = MeterModel(7, seed, T0)
    t_ms = int(T0 * 1000)
    for step in steps:
        t_ms += step
        stepped.advance(t_ms / 1000)
    once = MeterModel(7, seed, T0)
    once.advance(t_ms / 1000)
    assert stepped.energy_import_wh == once.energy_import_wh
    assert stepped.state() == once.state()


def test_energy_is_the_integral_of_power_without_drift() -> None:
    m = MeterModel(1, 0, T0, energy_import_wh=0)
    m.set_load(1000, T0)
    for k in range(1, 3601):
        m.advance(T0 + k)  # 3600 one-second steps at 1 kW
    assert m.energy_import_wh == 1000


def test_relay_open_stops_power_and_energy_unless_bypassed() -> None:
    m = MeterModel(1, 0, T0, energy_import_wh=0)
    m.set_load(3600, T0)
    m.set_relay(False, T0)
    m.advance(T0 + 600)
    assert (m.energy_import_wh, m.instant().power_w, m.instant().current_ma) == (0, 0, 0)
    m.set_tamper(Tamper.BYPASS, True, T0 + 600)
    m.advance(T0 + 660)
    assert m.energy_import_wh == 60
    assert m.status_bits() & 1 == 0


def test_reverse_tamper_counts_export_and_sets_bit_6() -> None:
    m = MeterModel(1, 0, T0, energy_import_wh=0)
    m.set_load(3600, T0)
    m.set_tamper(Tamper.REVERSE, True, T0)
    m.advance(T0 + 100)
    assert (m.energy_import_wh, m.energy_export_wh) == (0, 100)
    assert m.instant().power_w == -3600
    assert m.status_bits() & 0x40


def test_cover_and_magnet_flags() -> None:
    m = MeterModel(1, 0, T0)
    m.set_tamper(Tamper.COVER, True, T0)
    m.set_tamper(Tamper.MAGNET, True, T0)
    assert m.status_bits() & 0b110 == 0b110
    m.set_tamper(Tamper.COVER, False, T0)
    assert m.status_bits() & 0b110 == 0b100


@given(over_ms=st.integers(0, 30_000), start_ms=st.integers(0, 120_000))
def test_load_limit_trips_exactly_ten_seconds_after_going_over(over_ms: int, start_ms: int) -> None:
    t = T0 + start_ms / 1000
    m = MeterModel(1, 0, T0)
    m.set_load(500, T0)
    m.set_load_limit(1000, T0)
    m.advance(t)
    m.set_load(1500, t)
    m.advance(t + over_ms / 1000)
    tripped = over_ms >= 10_000
    assert m.load_limit_tripped is tripped
    assert m.relay_closed is not tripped
    assert bool(m.status_bits() & 0x20) is tripped


def test_keypad_sequence_wraps_and_ack_clears_only_the_current_entry() -> None:
    m = MeterModel(1, 0, T0)
    m.keypad_seq = 0xFFFF
    assert m.enter_keypad("1" * 20, T0) == 0
    assert m.keypad_pending
    m.acknowledge_keypad(0xFFFF, T0)
    assert m.keypad_pending
    m.acknowledge_keypad(0, T0)
    assert not m.keypad_pending
    assert m.status_bits() & 8 == 0


@given(st.text(max_size=30))
def test_bad_keypad_entries_are_rejected_and_change_nothing(digits: str) -> None:
    m = MeterModel(1, 0, T0)
    before = m.state()
    if len(digits) == 20 and digits.isascii() and digits.isdigit():
        m.enter_keypad(digits, T0)
        assert m.keypad_digits == digits
        return
    with pytest.raises(ControlError):
        m.enter_keypad(digits, T0)
    assert m.state() == before


@given(minute=st.integers(0, 10_000_000), seed=st.integers(0, 1000), unit=st.integers(1, 247))
def test_power_is_voltage_times_current_times_power_factor(
    minute: int, seed: int, unit: int
) -> None:
    m = MeterModel(unit, seed, minute * 60.0)
    inst = m.instant()
    assert 2000 < inst.voltage_dv < 2500
    assert 4990 <= inst.frequency_chz <= 5010
    assert 0 < inst.power_factor_milli <= 1000
    apparent = Fraction(inst.voltage_dv, 10) * Fraction(inst.current_ma, 1000)
    vip = apparent * Fraction(inst.power_factor_milli, 1000)
    assert abs(vip - inst.power_w) <= Fraction(inst.voltage_dv, 10_000) + 1  # 1 mA of rounding


def test_same_seed_same_loads_and_classes_have_their_daily_shape() -> None:
    a = [MeterModel(u, 5, T0).demand_w(m) for u in range(1, 20) for m in range(0, 1440, 7)]
    b = [MeterModel(u, 5, T0).demand_w(m) for u in range(1, 20) for m in range(0, 1440, 7)]
    c = [MeterModel(u, 6, T0).demand_w(m) for u in range(1, 20) for m in range(0, 1440, 7)]
    assert a == b
    assert a != c
    home = MeterModel(1, 0, T0, CustomerClass.RESIDENTIAL)
    day = 20458  # Monday 2026-01-05, in days since the epoch
    night = sum(home.demand_w(day * 1440 + 3 * 60 + k) for k in range(60))
    evening = sum(home.demand_w(day * 1440 + 19 * 60 + k) for k in range(60))
    assert evening > 4 * night
    shop = MeterModel(1, 0, T0, CustomerClass.WORKSHOP)
    weekday = sum(shop.demand_w(day * 1440 + 10 * 60 + k) for k in range(60))
    sunday = sum(shop.demand_w((day - 1) * 1440 + 10 * 60 + k) for k in range(60))
    assert weekday > 5 * sunday


def test_button_latches_and_energy_register_replacement() -> None:
    m = MeterModel(1, 0, T0)
    m.press_button(T0)
    assert m.status_bits() & 0x10
    m.replace_energy_register(T0)
    assert (m.energy_import_wh, m.energy_export_wh) == (0, 0)


@given(n=st.integers(-(10**12), 10**12), d=st.integers(1, 10**9))
def test_round_div_rounds_half_up(n: int, d: int) -> None:
    exact = Fraction(n, d)
    r = round_div(n, d)
    assert r - Fraction(1, 2) <= exact < r + Fraction(1, 2)


def test_time_never_goes_back() -> None:
    m = MeterModel(1, 0, T0)
    m.advance(T0 + 100)
    e = m.energy_import_wh
    m.advance(T0)
    assert m.energy_import_wh == e
    assert m.t_ms == int((T0 + 100) * 1000)
