"""The store's writer thread: awaited commits in order with gap-free seqs, the event loop
free meanwhile; acknowledgements visible at once, written with the next commit, kept on a
refused commit, written alone after the delay or past the row limit, flushed at close (the
timer stopped); a batch larger than one multi-row INSERT keeps ids and seqs consecutive
and its last state per meter."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.core.events import ReadingReceived, TopUpAccepted
from gateway.core.meter_state import MeterState, enrol
from gateway.core.settings import MeterSettings
from gateway.core.step import step
from gateway.core.tariff import FlatPricing, Tariff, TariffSchedule
from gateway.store import MeterRecord, MeterUpdate, Store, StoreError, TokenAlreadyAppliedError
from gateway.store import acks as acks_module

NOW = datetime(2026, 11, 2, 12, tzinfo=UTC)
SETTINGS = MeterSettings(TariffSchedule.single(Tariff("GBP", FlatPricing(Decimal(100)))))


def enrolled(store: Store, *meter_ids: str) -> dict[str, MeterState]:
    states = {m: enrol(m, SETTINGS, NOW, opening_balance=10_000) for m in meter_ids}
    store.add_meters(
        [
            (MeterRecord(m, "bus0", n + 1, "pe1", b"\x01" * 16), s)
            for n, (m, s) in enumerate(states.items())
        ],
        NOW,
    )
    return states


def reading(state: MeterState, wh: int, at: datetime) -> MeterUpdate:
    new, commands = step(state, ReadingReceived(state.meter_id, wh, at), at)
    return MeterUpdate(new, commands, at)


def acked_in_file(path: Path) -> list[int]:
    db = sqlite3.connect(path)
    try:
        return [i for (i,) in db.execute("SELECT id FROM outbox WHERE acked_at IS NOT NULL")]
    finally:
        db.close()


@pytest.mark.asyncio
async def test_async_commits_keep_order_and_seq(tmp_path: Path) -> None:
    with Store.open(tmp_path / "gw.db") as store:
        state = enrolled(store, "m1")["m1"]
        batches = []
        for n in range(1, 6):
            update = reading(state, 100 * n, NOW + timedelta(minutes=n))
            state = update.state
            batches.append([update])
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        rows = [await store.commit_cycle_async(b) for b in batches]
        task.cancel()
        seqs = [r.seq for batch in rows for r in batch]
        assert seqs == list(range(1, len(seqs) + 1))
        assert [r.id for r in store.outbox_pending(100)] == [r.id for b in rows for r in b]
        assert store.last_seq("m1") == len(seqs)
        assert ticks > 0  # the loop ran while the writer committed
    with Store.open(tmp_path / "gw.db") as store:
        (loaded,) = store.load_meters()
    assert loaded.state == state


def test_acks_are_seen_at_once_and_ride_in_the_next_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(acks_module, "ACK_FLUSH_S", 3600.0)
    path = tmp_path / "gw.db"
    with Store.open(path) as store:
        states = enrolled(store, "a", "b")
        rows = store.commit_cycle([reading(states["a"], 100, NOW)])
        store.mark_acked([rows[0].id], NOW)
        assert rows[0].id not in [r.id for r in store.outbox_pending(100)]
        assert store.outbox_depth() == len(rows) - 1
        assert store.outbox_since("a", 1)[0].acked_at == NOW
        assert acked_in_file(path) == []  # not written yet: no transaction of its own
        more = store.commit_cycle([reading(states["b"], 100, NOW)])
        assert acked_in_file(path) == [rows[0].id]
        assert store.outbox_depth() == len(rows) - 1 + len(more)


def test_a_refused_commit_keeps_the_acks_waiting_and_close_writes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(acks_module, "ACK_FLUSH_S", 3600.0)
    path = tmp_path / "gw.db"
    with Store.open(path) as store:
        state = enrolled(store, "m1")["m1"]
        credited, commands = step(state, TopUpAccepted("m1", 500, 7, "tok-7", "keypad", NOW), NOW)
        rows = store.apply(credited, commands, NOW)
        store.mark_acked([r.id for r in rows], NOW)
        with pytest.raises(TokenAlreadyAppliedError):
            store.apply(credited, commands, NOW)
        assert acked_in_file(path) == []
        assert store.outbox_depth() == 0
    assert acked_in_file(path) == [r.id for r in rows]


def test_acks_without_a_commit_are_written_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(acks_module, "ACK_FLUSH_S", 0.0)
    path = tmp_path / "gw.db"
    with Store.open(path) as store:
        state = enrolled(store, "m1")["m1"]
        rows = store.commit_cycle([reading(state, 100, NOW)])
        store.mark_acked([r.id for r in rows], NOW)
        give_up = time.monotonic() + 60  # a bound for a stuck writer, not a figure
        while acked_in_file(path) != [r.id for r in rows] and time.monotonic() < give_up:
            time.sleep(0.01)
        assert acked_in_file(path) == [r.id for r in rows]


def test_acks_past_the_row_limit_are_written_without_waiting_for_the_timer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(acks_module, "ACK_FLUSH_S", 3600.0)
    monkeypatch.setattr(acks_module, "ACK_FLUSH_ROWS", 2)
    path = tmp_path / "gw.db"
    with Store.open(path) as store:
        first = reading(enrolled(store, "m1")["m1"], 100, NOW)
        rows = store.commit_cycle([first, reading(first.state, 200, NOW + timedelta(minutes=1))])
        assert len(rows) == 3
        store.mark_acked([rows[0].id], NOW)
        store.load_meters()  # runs on the writer thread, after anything queued before it
        assert acked_in_file(path) == []
        store.mark_acked([rows[1].id], NOW)
        store.load_meters()
        assert acked_in_file(path) == [rows[0].id, rows[1].id]


def test_close_stops_the_ack_timer_and_writes_what_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(acks_module, "ACK_FLUSH_S", 3600.0)
    path = tmp_path / "gw.db"

    def timers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "store-acks"]

    with Store.open(path) as store:
        state = enrolled(store, "m1")["m1"]
        rows = store.commit_cycle([reading(state, 100, NOW)])
        store.mark_acked([rows[0].id], NOW)
        assert len(timers()) == 1
    assert timers() == []
    assert acked_in_file(path) == [rows[0].id]
    with pytest.raises(StoreError, match="closed"):
        store.mark_acked([rows[0].id], NOW)


def test_a_large_batch_keeps_ids_seqs_and_the_last_state(tmp_path: Path) -> None:
    meters = [f"m{n:03d}" for n in range(150)]
    with Store.open(tmp_path / "gw.db") as store:
        states = enrolled(store, *meters)
        updates = []
        for n in range(2):  # every meter twice: its second state is the one kept
            for m in meters:
                update = reading(states[m], 100 * (n + 1), NOW + timedelta(minutes=n))
                states[m] = update.state
                updates.append(update)
        rows = store.commit_cycle(updates)
        assert len(rows) > 300  # more than two multi-row INSERTs
        assert [r.id for r in rows] == list(range(rows[0].id, rows[0].id + len(rows)))
        assert [r.id for r in store.outbox_pending(10_000)] == [r.id for r in rows]
        for m in meters:
            assert [r.seq for r in store.outbox_since(m, 1)] == list(
                range(1, store.last_seq(m) + 1)
            )
    with Store.open(tmp_path / "gw.db") as store:
        loaded = {s.record.meter_id: s.state for s in store.load_meters()}
    assert loaded == states


def test_a_commit_not_returning_rows_writes_the_same_rows(tmp_path: Path) -> None:
    with Store.open(tmp_path / "a.db") as a, Store.open(tmp_path / "b.db") as b:
        states = enrolled(a, "m1", "m2")
        enrolled(b, "m1", "m2")
        updates = [reading(states[m], 100, NOW) for m in ("m1", "m2")]
        returned = a.commit_cycle(updates)
        assert b.commit_cycle(updates, returning=False) == []
        assert returned
        assert [(r.id, r.meter_id, r.seq, r.kind, r.body) for r in returned] == [
            (r.id, r.meter_id, r.seq, r.kind, r.body) for r in b.outbox_pending(100)
        ]
