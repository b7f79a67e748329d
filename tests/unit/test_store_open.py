"""Opening the store: a new file is created owner-only (with its -wal and -shm) whatever the umask and migrated; a foreign, corrupt or newer file is refused with a clear error and left byte-for-byte unchanged."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.events import ReadingReceived
from gateway.core.meter_state import enrol
from gateway.core.settings import MeterSettings
from gateway.core.step import step
from gateway.core.tariff import FlatPricing, Tariff, TariffSchedule
from gateway.forms import ledger_json
from gateway.store import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    CorruptStoreError,
    ForeignFileError,
    MeterRecord,
    SchemaTooNewError,
    Store,
    StoreError,
)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_new_store_is_migrated_in_wal_with_full_sync(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    with Store.open(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    with Store.open(path) as store:  # and opens again
        assert store.schema_version() == SCHEMA_VERSION


def test_an_empty_file_becomes_a_store(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    path.touch()
    with Store.open(path) as store:
        assert store.outbox_depth() == 0


def refused(path: Path, error: type[StoreError], match: str) -> None:
    before = digest(path)
    siblings = sorted(p.name for p in path.parent.iterdir())
    with pytest.raises(error, match=match):
        Store.open(path)
    assert digest(path) == before
    assert sorted(p.name for p in path.parent.iterdir()) == siblings


def test_a_text_file_is_refused_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("shopping list\n" * 20)
    refused(path, ForeignFileError, "not a SQLite database")


def test_another_applications_sqlite_is_refused_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (x)")
    db.execute("INSERT INTO t VALUES (1)")
    db.commit()
    db.close()
    refused(path, ForeignFileError, "another application")


def test_a_newer_schema_is_refused_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    Store.open(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    refused(path, SchemaTooNewError, "newer than this gateway")


def test_a_damaged_store_is_refused_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    with Store.open(path) as store:
        assert store.outbox_depth() == 0
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    for offset in range(page_size, len(data), 7):  # every page after the header page
        data[offset] ^= 0x5A
    path.write_bytes(bytes(data))
    refused(path, CorruptStoreError, "damaged")


def test_a_truncated_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    path.write_bytes(b"SQLite format 3\x00" + b"\x00" * 10)
    refused(path, ForeignFileError, "not a SQLite database")


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(min_size=1, max_size=4096), keep_magic=st.booleans())
def test_junk_is_refused_with_a_store_error(tmp_path: Path, junk: bytes, keep_magic: bool) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes((b"SQLite format 3\x00" if keep_magic else b"") + junk)
    before = digest(path)
    try:
        Store.open(path).close()
    except StoreError:
        assert digest(path) == before
    else:  # pragma: no cover - only if junk happened to be a valid store of ours
        pytest.fail("junk opened as a store")


def test_unusable_paths_are_store_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot"):
        Store.open(tmp_path)  # a directory
    with pytest.raises(StoreError, match=r"cannot create .*: No such file or directory"):
        Store.open(tmp_path / "missing" / "gw.db")


def test_a_schema_3_store_with_meters_is_upgraded_and_reads_the_same(tmp_path: Path) -> None:
    """Schema 3 wrote ``ledgers.state_json`` in pydantic's form (times as ISO text): a
    store of that version opens, moves to the current schema, and loads the same states."""
    path = tmp_path / "gw.db"
    start = datetime(2026, 11, 2, tzinfo=UTC)
    settings = MeterSettings(TariffSchedule.single(Tariff("KES", FlatPricing(Decimal(25)))))
    states = {}
    with Store.open(path) as store:
        for n in range(3):
            state = enrol(f"m{n}", settings, start, opening_balance=100_000)
            store.add_meter(MeterRecord(f"m{n}", "bus", n + 1, "pe1", b"k" * 16), state, start)
            for cycle in range(3):
                now = start + timedelta(minutes=15 * cycle)
                state, commands = step(state, ReadingReceived(f"m{n}", 100 * cycle, now), now)
                store.apply(state, commands, now)
            states[f"m{n}"] = state
    db = sqlite3.connect(path)
    with db:
        for meter_id, state in states.items():
            db.execute(
                "UPDATE ledgers SET state_json = ? WHERE meter_id = ?",
                (ledger_json(state), meter_id),
            )
        db.execute("ALTER TABLE meters DROP COLUMN control_secret")  # schema 6's
        db.execute("PRAGMA user_version = 3")
    db.close()
    with Store.open(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert {m.state.meter_id: m.state for m in store.load_meters()} == states


def test_a_new_store_is_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    old = os.umask(0)
    try:
        with Store.open(path) as store:
            now = datetime(2026, 11, 2, tzinfo=UTC)
            settings = MeterSettings(TariffSchedule.single(Tariff("KES", FlatPricing(Decimal(25)))))
            record = MeterRecord("m1", "bus", 1, "pe1", b"k" * 16)
            store.add_meter(record, enrol("m1", settings, now), now)  # -wal and -shm exist now
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    finally:
        os.umask(old)
    assert modes == {"gw.db": 0o600, "gw.db-wal": 0o600, "gw.db-shm": 0o600}
