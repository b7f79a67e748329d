"""The store holds keys of later epochs installed ahead of a key change, and a key change commits the meter's new key and epoch in the cycle's transaction with its token window (the keys of passed epochs dropped); installing a key at or below the current epoch, or for a meter not enrolled, changes nothing; removing a meter removes its installed keys."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.core.commands import TopUpDecision
from gateway.core.meter_state import enrol
from gateway.core.settings import MeterSettings
from gateway.core.tariff import FlatPricing, Tariff, TariffSchedule
from gateway.store import MeterRecord, Store, StoreError, UnknownMeterError
from gateway.store.records import MeterUpdate
from protocol.tokens.replay import ReplayWindow

NOW = datetime(2026, 11, 2, 12, tzinfo=UTC)
SETTINGS = MeterSettings(TariffSchedule.single(Tariff("KES", FlatPricing(Decimal(100)))))
RECORD = MeterRecord("m1", "bus0", 1, "pe1", b"\x00" * 32, 0)


def test_a_key_change_commits_the_installed_key_with_the_window(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    with Store.open(path) as store:
        state = enrol("m1", SETTINGS, NOW, opening_balance=1000)
        store.add_meter(RECORD, state, NOW)
        store.install_meter_keys([("m1", 1, b"\x01" * 32), ("m1", 2, b"\x02" * 32)])
        (meter,) = store.load_meters()
        assert meter.next_keys == {1: b"\x01" * 32, 2: b"\x02" * 32}
        decision = TopUpDecision("m1", "m1:0:4", True, "accepted")
        update = MeterUpdate(state, [decision], NOW, ReplayWindow.fresh(1), key_epoch=1)
        store.commit_cycle([update])
    with Store.open(path) as store:
        (meter,) = store.load_meters()
        assert (meter.record.key_epoch, meter.record.meter_key) == (1, b"\x01" * 32)
        assert meter.token_window is not None
        assert meter.token_window.epoch == 1
        assert meter.next_keys == {2: b"\x02" * 32}
        assert store.token_applied("m1", "m1:0:4")
        with pytest.raises(StoreError, match="at key epoch 1"):
            store.install_meter_keys([("m1", 1, b"\x03" * 32)])
        with pytest.raises(UnknownMeterError):
            store.install_meter_keys([("m1", 3, b"\x03" * 32), ("m9", 3, b"\x03" * 32)])
        (meter,) = store.load_meters()
        assert meter.next_keys == {2: b"\x02" * 32}  # nothing of the refused batch
        store.remove_meter(meter.state, [], NOW)
        assert store.load_meters() == []


def test_a_key_change_to_an_epoch_not_installed_commits_nothing(tmp_path: Path) -> None:
    with Store.open(tmp_path / "gw.db") as store:
        state = enrol("m1", SETTINGS, NOW, opening_balance=1000)
        store.add_meter(RECORD, state, NOW)
        decision = TopUpDecision("m1", "m1:0:4", True, "accepted")
        update = MeterUpdate(state, [decision], NOW, ReplayWindow.fresh(5), key_epoch=5)
        with pytest.raises(StoreError, match="no key installed for epoch 5"):
            store.commit_cycle([update])
        (meter,) = store.load_meters()
        assert (meter.record.key_epoch, meter.token_window) == (0, None)
        assert not store.token_applied("m1", "m1:0:4")
