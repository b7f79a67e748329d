"""The store's cycle commit and outbox: one transaction per batch, gap-free per-meter seq across restarts and purges, acks, resend, token counters recorded with the credit, nothing written on refusal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.core.events import ReadingReceived, TopUpAccepted
from gateway.core.meter_state import MeterState, enrol
from gateway.core.settings import MeterSettings
from gateway.core.step import step
from gateway.core.tariff import FlatPricing, Tariff, TariffSchedule
from gateway.store import (
    DuplicateMeterError,
    MeterRecord,
    MeterUpdate,
    Store,
    TokenAlreadyAppliedError,
    TokenWindow,
    UnknownMeterError,
)

NOW = datetime(2026, 11, 2, 12, tzinfo=UTC)
SETTINGS = MeterSettings(TariffSchedule.single(Tariff("GBP", FlatPricing(Decimal(100)))))


def enrolled(store: Store, meter_id: str, balance: int = 1000) -> MeterState:
    state = enrol(meter_id, SETTINGS, NOW, opening_balance=balance)
    store.add_meter(MeterRecord(meter_id, "bus0", 1, "pe1", b"\x01" * 16, 3), state, NOW)
    return state


def test_meters_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    with Store.open(path) as store:
        state = enrolled(store, "m1")
        with pytest.raises(DuplicateMeterError):
            enrolled(store, "m1")
    with Store.open(path) as store:
        (loaded,) = store.load_meters()
    assert loaded.state == state
    assert loaded.record == MeterRecord("m1", "bus0", 1, "pe1", b"\x01" * 16, 3)
    assert loaded.token_window is None


def test_seq_is_gap_free_per_meter_across_restarts_and_purges(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    with Store.open(path) as store:
        a, b = enrolled(store, "a"), enrolled(store, "b")
        a, ca = step(a, ReadingReceived("a", 100, NOW), NOW)
        b, cb = step(b, ReadingReceived("b", 100, NOW), NOW)
        rows = store.commit_cycle([MeterUpdate(a, ca, NOW), MeterUpdate(b, cb, NOW)])
        assert [(r.meter_id, r.seq) for r in rows] == [("a", 1), ("b", 1)]
        store.mark_acked([r.id for r in rows], NOW)
        assert store.purge_acked(NOW + timedelta(seconds=1)) == 2
    with Store.open(path) as store:
        (sa, _sb) = [m.state for m in store.load_meters()]
        t = NOW + timedelta(minutes=1)
        sa, ca = step(sa, ReadingReceived("a", 400, t), t)
        rows = store.apply(sa, ca, t)
        assert [r.seq for r in rows] == [2, 3]  # reading and balance
        assert [r.kind for r in rows] == ["reading", "balance"]
        assert store.last_seq("a") == 3
        assert store.last_seq("b") == 1


def test_outbox_pending_in_order_acks_and_resend(tmp_path: Path) -> None:
    with Store.open(tmp_path / "gw.db") as store:
        state = enrolled(store, "m1")
        all_rows = []
        for minute in range(5):
            t = NOW + timedelta(minutes=minute)
            state, commands = step(state, ReadingReceived("m1", 100 + minute * 100, t), t)
            all_rows += store.apply(state, commands, t)
        pending = store.outbox_pending(100)
        assert [r.id for r in pending] == [r.id for r in all_rows]
        assert [r.seq for r in pending] == list(range(1, len(all_rows) + 1))
        assert pending[0].body["kind"] == "reading"
        assert "seq" not in pending[0].body
        assert "ts" not in pending[0].body
        assert store.outbox_depth() == len(all_rows)
        page = store.outbox_pending(2, after_id=pending[1].id)
        assert [r.id for r in page] == [pending[2].id, pending[3].id]
        store.mark_acked([r.id for r in pending[:3]], NOW + timedelta(hours=1))
        assert store.outbox_depth() == len(all_rows) - 3
        assert store.outbox_pending(1)[0].id == pending[3].id
        resend = store.outbox_since("m1", 2)
        assert [r.seq for r in resend] == list(range(2, len(all_rows) + 1))
        assert resend[0].acked_at == NOW + timedelta(hours=1)
        assert store.purge_acked(NOW + timedelta(hours=1)) == 0  # not older than
        assert store.purge_acked(NOW + timedelta(hours=2)) == 3
        assert store.outbox_since("m1", 1)[0].seq == 4


def test_each_meters_latest_balance_outlives_the_purge_and_shows_once_acknowledged(
    tmp_path: Path,
) -> None:
    """Rebirth republishes a meter's latest balance on every session: the purge keeps it
    however old, and it is offered only once the broker acknowledged it (before that it is
    the drain's, in seq order)."""
    with Store.open(tmp_path / "gw.db") as store:
        state = enrolled(store, "m1")
        enrolled(store, "idle")
        rows = []
        for minute in range(3):
            t = NOW + timedelta(minutes=minute)
            state, commands = step(state, ReadingReceived("m1", 100 + minute * 100, t), t)
            rows += store.apply(state, commands, t)
        balances = [r for r in rows if r.kind == "balance"]
        assert len(balances) >= 2
        assert store.latest_balance("m1") is None  # not yet acknowledged
        assert store.latest_balance("idle") is None  # none at all
        store.mark_acked([r.id for r in rows[:-1]], NOW)
        if rows[-1].kind == "balance":
            assert store.latest_balance("m1") is None
        store.mark_acked([rows[-1].id], NOW)  # waiting in the ack batch: counts
        latest = store.latest_balance("m1")
        assert latest is not None
        assert (latest.id, latest.seq) == (balances[-1].id, balances[-1].seq)
        purged = store.purge_acked(NOW + timedelta(days=30))
        assert purged == len(rows) - 1
        kept = store.outbox_since("m1", 0)
        assert [(r.seq, r.kind) for r in kept] == [(balances[-1].seq, "balance")]
        assert store.latest_balance("m1") == latest


def test_token_credit_window_and_counter_commit_together(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    with Store.open(path) as store:
        state = enrolled(store, "m1")
        top_up = TopUpAccepted("m1", 500, 7, "tok-7", "keypad", NOW)
        credited, commands = step(state, top_up, NOW)
        window = TokenWindow(epoch=1, highest=7, bitmap=(1 << 64) - 1)
        store.apply(credited, commands, NOW, token_window=window, lockout={"bad": 0})
        assert store.token_applied("m1", "tok-7")
        depth = store.outbox_depth()
        with pytest.raises(TokenAlreadyAppliedError):  # the same credit again: refused whole
            store.apply(credited, commands, NOW, token_window=window)
        assert store.outbox_depth() == depth
        assert store.last_seq("m1") == depth
    with Store.open(path) as store:
        (loaded,) = store.load_meters()
    assert loaded.state.ledger.balance == 1500
    assert loaded.token_window == window
    assert loaded.lockout == {"bad": 0}


def test_unknown_meter_commits_nothing(tmp_path: Path) -> None:
    with Store.open(tmp_path / "gw.db") as store:
        a = enrolled(store, "a")
        a, ca = step(a, ReadingReceived("a", 100, NOW), NOW)
        ghost = enrol("ghost", SETTINGS, NOW)
        ghost, cg = step(ghost, ReadingReceived("ghost", 100, NOW), NOW)
        with pytest.raises(UnknownMeterError):
            store.commit_cycle([MeterUpdate(a, ca, NOW), MeterUpdate(ghost, cg, NOW)])
        assert store.outbox_depth() == 0
        assert store.last_seq("a") == 0


def test_events_are_logged_beyond_the_outbox(tmp_path: Path) -> None:
    with Store.open(tmp_path / "gw.db") as store:
        state = enrolled(store, "m1")
        state, commands = step(state, TopUpAccepted("m1", 5, 1, "t", "online", NOW), NOW)
        rows = store.apply(state, commands, NOW)
        store.mark_acked([r.id for r in rows], NOW)
        store.purge_acked(NOW + timedelta(days=1))
        assert [e["event"] for e in store.events("m1")] == ["token_accepted"]


def test_tariff_change_is_stored_with_the_state(tmp_path: Path) -> None:
    from gateway.core.events import TariffChanged  # noqa: PLC0415

    path = tmp_path / "gw.db"
    new = Tariff("GBP", FlatPricing(Decimal(250)))
    with Store.open(path) as store:
        state = enrolled(store, "m1")
        state, commands = step(state, TariffChanged("m1", new, NOW, NOW + timedelta(days=1)), NOW)
        store.apply(state, commands, NOW)
    with Store.open(path) as store:
        (loaded,) = store.load_meters()
    assert loaded.state.settings.tariffs.at(NOW + timedelta(days=2)) == new


def test_unreadable_stored_state_is_a_corrupt_store_error(tmp_path: Path) -> None:
    import sqlite3  # noqa: PLC0415

    from gateway.store import CorruptStoreError  # noqa: PLC0415

    path = tmp_path / "gw.db"
    with Store.open(path) as store:
        enrolled(store, "m1")
    db = sqlite3.connect(path)
    db.execute("""UPDATE ledgers SET state_json = '{"ledger": {"balance": "lots"}}'""")
    db.commit()
    db.close()
    with Store.open(path) as store, pytest.raises(CorruptStoreError, match="m1"):
        store.load_meters()
