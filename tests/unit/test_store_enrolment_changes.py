"""The store corrects and removes an enrolment in one transaction with the events that tell the headend: an update rewrites the meter's address, key and settings beside its queued event; a removal queues the meter's last event and deletes its rows but keeps its outbox and event log; a meter enrolled again never reuses a seq."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import JsonValue

from gateway.core.commands import Publish
from gateway.core.meter_state import MeterState, enrol
from gateway.core.settings import MeterSettings
from gateway.core.tariff import FlatPricing, Tariff, TariffSchedule
from gateway.store import MeterRecord, Store, TokenWindow, UnknownMeterError

NOW = datetime(2026, 11, 2, 12, tzinfo=UTC)
SETTINGS = MeterSettings(TariffSchedule.single(Tariff("KES", FlatPricing(Decimal(100)))))
RECORD = MeterRecord("m1", "bus0", 1, "pe1", b"\x01" * 32, 0)


def event(name: str) -> Publish:
    body: dict[str, JsonValue] = {"kind": "event", "event": name, "reason": "test"}
    return Publish("m1", "event", body)


def enrolled(store: Store) -> MeterState:
    state = enrol("m1", SETTINGS, NOW, opening_balance=1000)
    store.add_meter(RECORD, state, NOW)
    return state


def test_an_update_rewrites_the_record_and_settings_with_its_event(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    with Store.open(path) as store:
        state = enrolled(store)
        moved = replace(RECORD, bus="bus1", unit_id=7, meter_key=b"\x02" * 32)
        settings = replace(SETTINGS, alarm1=900)
        store.update_meter(moved, replace(state, settings=settings), [event("updated")], NOW)
    with Store.open(path) as store:
        (meter,) = store.load_meters()
        assert meter.record == moved
        assert meter.state.settings.alarm1 == 900
        assert meter.state.ledger == state.ledger
        assert [(r.seq, r.body["event"]) for r in store.outbox_pending()] == [(1, "updated")]
        assert [e["event"] for e in store.events("m1")] == ["updated"]


def test_an_update_of_an_unknown_meter_changes_nothing(tmp_path: Path) -> None:
    with Store.open(tmp_path / "gw.db") as store:
        state = enrol("m1", SETTINGS, NOW)
        with pytest.raises(UnknownMeterError):
            store.update_meter(RECORD, state, [event("updated")], NOW)
        with pytest.raises(ValueError, match="different meters"):
            store.update_meter(replace(RECORD, meter_id="m2"), state, [], NOW)
        assert store.load_meters() == []
        assert store.outbox_pending() == []


def test_a_removal_keeps_the_outbox_and_log_and_a_new_enrolment_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    with Store.open(path) as store:
        state = enrolled(store)
        store.apply(state, [event("first")], NOW, token_window=TokenWindow(0, 5, 0))
        store.remove_meter(state, [event("removed")], NOW)
        assert store.load_meters() == []
    with Store.open(path) as store:
        assert [(r.seq, r.body["event"]) for r in store.outbox_pending()] == [
            (1, "first"),
            (2, "removed"),
        ]
        assert [e["event"] for e in store.events("m1")] == ["first", "removed"]
        again = enrolled(store)
        (meter,) = store.load_meters()
        assert meter.token_window is None  # a new enrolment: nothing of the old one's
        rows = store.apply(again, [event("back")], NOW)
        assert [(r.seq, r.body["event"]) for r in rows] == [(3, "back")]
    with Store.open(path) as store:
        assert store.last_seq("m1") == 3
