"""A DL/T 645 meter's polled points become the same MeterSnapshot a Modbus meter gives: energy in whole Wh rounded down, power in W, the relay from the status word's relay_open bit, every named status bit as a flag; data that does not decode is a DecodeError, never a snapshot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.dlt645_io import Dlt645MeterIO, command_deadline, snapshot_from
from protocol.dlt645.bcd import BitsFormat, NumberFormat
from protocol.dlt645.clock import MeterTime
from protocol.dlt645.meter_map import load_dlt645_map
from protocol.errors import DecodeError

SINGLE = load_dlt645_map("dlt645_single_phase")
ENERGY = NumberFormat.parse("XXXXXX.XX")
POWER = NumberFormat.parse("XX.XXXX", signed=True)


def _status(*bits: int) -> bytes:
    return BitsFormat().encode(sum(1 << b for b in bits))


@given(st.integers(0, ENERGY.limit - 1), st.integers(-POWER.limit + 1, POWER.limit - 1))
def test_energy_and_power_in_base_units(scaled_energy: int, scaled_power: int) -> None:
    snap = snapshot_from(
        SINGLE,
        {
            "energy_import": ENERGY.encode(scaled_energy),
            "active_power": POWER.encode(scaled_power),
            "status": _status(),
        },
    )
    assert snap.energy_import_wh == scaled_energy * 10  # 0.01 kWh is 10 Wh
    assert snap.power_w == round(scaled_power / 10)  # 0.0001 kW is 0.1 W
    assert snap.relay_closed is True
    assert snap.keypad_seq is None
    assert snap.resolution_wh == 10  # one count of XXXXXX.XX kWh: plausible on top


def test_status_words_give_the_relay_and_flags() -> None:
    snap = snapshot_from(
        SINGLE,
        {
            "energy_import": ENERGY.encode(1),
            "status": _status(4, 6, 12),
            "status_word_1": _status(4),
        },
    )
    assert snap.relay_closed is False
    assert snap.flags == {"relay_open", "relay_command_open", "protected", "reverse_energy"}
    assert snap.power_w is None
    assert snap.voltage_v is None


def test_without_a_status_word_the_relay_is_unknown() -> None:
    assert snapshot_from(SINGLE, {"energy_import": ENERGY.encode(5)}).relay_closed is None


def test_undecodable_data_is_never_a_snapshot() -> None:
    with pytest.raises(DecodeError):
        snapshot_from(SINGLE, {"energy_import": b"\x1a\x00\x00\x00"})
    with pytest.raises(DecodeError):
        snapshot_from(SINGLE, {"energy_import": b"\x00\x00"})
    with pytest.raises(KeyError):
        snapshot_from(SINGLE, {"status": _status()})


def test_polled_points_must_exist_in_the_model() -> None:
    with pytest.raises(ValueError, match="no point"):
        Dlt645MeterIO(SINGLE, ("energy_import", "keypad_digits"))
    assert Dlt645MeterIO(SINGLE).polled == ("energy_import", "status")


def test_command_deadline_is_in_the_zone_given() -> None:
    now = datetime(2026, 1, 1, 23, 58, tzinfo=UTC).astimezone(timezone(timedelta(hours=8)))
    assert command_deadline(now) == MeterTime(2026, 1, 2, 8, 3, 0)
