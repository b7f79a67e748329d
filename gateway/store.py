"""The durable store: SQLite in WAL mode with ``synchronous=FULL``.

One transaction holds everything a step of the core decided for a batch of meters: the
new ledgers, the token counters they credited, the lockout state, the event log and the
outbox rows with their per-meter gap-free ``seq``. A crash therefore either keeps all of
it or none of it; a credit cannot be lost or doubled, and a ``seq`` never skips.

A file is checked before anything is written to it: the SQLite header, our
``application_id`` and the schema version are read from the raw bytes, then
``PRAGMA quick_check`` runs on a read-only connection. A foreign, corrupt or newer file is
refused unchanged.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Protocol, Self

from pydantic import JsonValue

from gateway.core.commands import Command, Publish, TopUpDecision
from gateway.core.driver import MeterState
from gateway.core.json_forms import (
    SettingsError,
    ledger_json,
    settings_from_json,
    settings_to_json,
    state_from_json,
)
from gateway.core.settings import MeterSettings
from gateway.store_migrations import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION

SQLITE_MAGIC = b"SQLite format 3\x00"


class StoreError(Exception):
    """The store refused an operation; nothing was changed."""


class ForeignFileError(StoreError):
    """The file is not a prepaid-edge store (not SQLite, or another application's)."""


class CorruptStoreError(StoreError):
    """The file is ours but SQLite reports damage."""


class SchemaTooNewError(StoreError):
    """The file was written by a newer prepaid-edge; upgrade the gateway to open it."""


class UnknownMeterError(StoreError):
    pass


class DuplicateMeterError(StoreError):
    pass


class TokenAlreadyAppliedError(StoreError):
    """A token's credit was already committed: applying it again would double it."""


class WindowLike(Protocol):
    """The used-token window of ``protocol.tokens`` (``ReplayWindow``): plain ints."""

    @property
    def epoch(self) -> int: ...
    @property
    def highest(self) -> int: ...
    @property
    def bitmap(self) -> int: ...


@dataclass(frozen=True, slots=True)
class TokenWindow:
    epoch: int
    highest: int
    bitmap: int


@dataclass(frozen=True, slots=True)
class MeterRecord:
    """How to reach a meter and the key its tokens are bound to."""

    meter_id: str
    bus: str
    unit_id: int
    map_name: str
    meter_key: bytes
    key_epoch: int = 0
    #: for a meter without a relay of its own: "BUS:UNIT:COIL" of the relay that switches
    #: its supply (a relay module on a bus the gateway polls)
    relay_output: str | None = None


@dataclass(frozen=True, slots=True)
class StoredMeter:
    record: MeterRecord
    state: MeterState
    token_window: TokenWindow | None
    lockout: dict[str, JsonValue] | None


@dataclass(frozen=True, slots=True)
class MeterUpdate:
    """What one step decided for one meter, to be committed with the rest of its cycle."""

    state: MeterState
    commands: Sequence[Command]
    now: datetime
    token_window: WindowLike | None = None
    lockout: dict[str, JsonValue] | None = None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    meter_id: str
    seq: int
    kind: str
    ts: datetime
    body: dict[str, JsonValue] = field(hash=False)
    acked_at: datetime | None = None


def _to_signed64(value: int) -> int:
    if not 0 <= value < 1 << 64:
        raise ValueError("token window bitmap must be a 64-bit unsigned int")
    return value - (1 << 64) if value >= 1 << 63 else value


def _from_signed64(value: int) -> int:
    return value + (1 << 64) if value < 0 else value


def _iso(at: datetime) -> str:
    if at.tzinfo is None:
        raise ValueError("store times must carry a time zone")
    return at.isoformat()


def _check_file(path: Path) -> int | None:
    """The schema version of an existing store at ``path``; None for a new (absent or
    empty) file. Reads the header bytes only, so a refused file is never touched."""
    try:
        if not path.exists() or path.stat().st_size == 0:
            return None
        with path.open("rb") as handle:
            header = handle.read(100)
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc}") from exc
    if len(header) < 100 or not header.startswith(SQLITE_MAGIC):
        raise ForeignFileError(f"{path} is not a SQLite database")
    version = int.from_bytes(header[60:64], "big")
    application_id = int.from_bytes(header[68:72], "big")
    if application_id != APPLICATION_ID:
        raise ForeignFileError(
            f"{path} is a SQLite database of another application "
            f"(application_id {application_id:#x}, ours is {APPLICATION_ID:#x})"
        )
    if version > SCHEMA_VERSION:
        raise SchemaTooNewError(
            f"{path} has schema version {version}, newer than this gateway's "
            f"{SCHEMA_VERSION}: upgrade prepaid-edge to open it"
        )
    try:
        # With a write-ahead log left by a crash, read through it; otherwise open the file
        # immutable so that not even -wal/-shm siblings are created for a refused file.
        wal = path.with_name(path.name + "-wal")
        mode = "mode=ro" if wal.exists() else "mode=ro&immutable=1"
        probe = sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True)
        try:
            rows = probe.execute("PRAGMA quick_check").fetchall()
        finally:
            probe.close()
    except sqlite3.DatabaseError as exc:
        raise CorruptStoreError(f"{path} is damaged: {exc}") from exc
    if rows != [("ok",)]:
        raise CorruptStoreError(f"{path} is damaged: {'; '.join(str(r[0]) for r in rows[:5])}")
    return version


@dataclass(slots=True)
class _Batch:
    """The rows one ``commit_cycle`` writes, prepared before the transaction opens."""

    #: only the meters this batch touches: the work is proportional to the batch, not
    #: to the number of meters enrolled
    seqs: dict[str, int]
    settings_cache: dict[str, MeterSettings]
    ledgers: list[tuple[int, int, str, str, str, str]] = field(default_factory=list)
    settings: list[tuple[str, str]] = field(default_factory=list)
    outbox: list[tuple[str, int, str, str, str]] = field(default_factory=list)
    events: list[tuple[str, str, str, str]] = field(default_factory=list)
    tokens: list[tuple[str, str, str]] = field(default_factory=list)
    windows: list[tuple[str, int, int, int]] = field(default_factory=list)
    lockouts: list[tuple[str, str]] = field(default_factory=list)
    rows: list[OutboxRow] = field(default_factory=list)


class Store:
    """The gateway's one SQLite file. Not thread-safe: the core task is its only writer."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        self._seq: dict[str, int] = dict(
            connection.execute("SELECT meter_id, last_seq FROM outbox_seq").fetchall()
        )
        self._settings: dict[str, MeterSettings] = {}

    @classmethod
    def open(cls, path: str | Path) -> Store:
        """Open (or create) the store at ``path`` and migrate it to the current schema."""
        path = Path(path)
        version = _check_file(path)
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {path}: {exc}") from exc
        try:
            if version is None:
                # Mark a new file as ours before WAL mode, so that the id is in the main
                # file's header even if the process dies before the first checkpoint.
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            cls._migrate(db, db.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            db.close()
            raise CorruptStoreError(f"{path}: {exc}") from exc
        return cls(db, path)

    @staticmethod
    def _migrate(db: sqlite3.Connection, version: int) -> None:
        for target in sorted(v for v in MIGRATIONS if v > version):
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[target].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {target}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def schema_version(self) -> int:
        version: int = self._db.execute("PRAGMA user_version").fetchone()[0]
        return version

    # ------------------------------------------------------------------ meters
    def add_meter(self, record: MeterRecord, state: MeterState, now: datetime) -> None:
        """Enrol a meter with its initial state."""
        self.add_meters([(record, state)], now)

    def add_meters(self, meters: Sequence[tuple[MeterRecord, MeterState]], now: datetime) -> None:
        """Enrol several meters in ONE transaction: all of them or, on any error, none."""
        for record, state in meters:
            if record.meter_id != state.meter_id:
                raise ValueError("record and state name different meters")
        current = ""
        try:
            with self._transaction() as db:
                for record, state in meters:
                    current = record.meter_id
                    db.execute(
                        "INSERT INTO meters (meter_id, bus, unit_id, map_name, meter_key,"
                        " key_epoch, settings_json, enrolled_at, relay_output)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            record.meter_id,
                            record.bus,
                            record.unit_id,
                            record.map_name,
                            record.meter_key,
                            record.key_epoch,
                            json.dumps(settings_to_json(state.settings)),
                            _iso(now),
                            record.relay_output,
                        ),
                    )
                    self._write_ledger(db, state, now)
                    db.execute("INSERT INTO outbox_seq VALUES (?, 0)", (record.meter_id,))
        except sqlite3.IntegrityError as exc:
            raise DuplicateMeterError(f"meter {current} is already enrolled") from exc
        for record, state in meters:
            self._seq[record.meter_id] = 0
            self._settings[record.meter_id] = state.settings

    def load_meters(self) -> list[StoredMeter]:
        """Every enrolled meter with its state, token window and lockout, by meter id."""
        db = self._db
        windows = {
            m: TokenWindow(e, h, _from_signed64(b))
            for m, e, h, b in db.execute(
                "SELECT meter_id, epoch, highest, bitmap FROM token_window"
            )
        }
        lockouts = {
            m: json.loads(s)
            for m, s in db.execute("SELECT meter_id, state_json FROM keypad_lockout")
        }
        out = []
        rows = db.execute(
            "SELECT m.meter_id, bus, unit_id, map_name, meter_key, key_epoch, settings_json,"
            " state_json, relay_output FROM meters m JOIN ledgers l USING (meter_id)"
            " ORDER BY m.meter_id"
        )
        for meter_id, bus, unit_id, map_name, key, epoch, settings_json, state_json, relay in rows:
            try:
                settings = settings_from_json(json.loads(settings_json))
                body = json.loads(state_json)
                body["settings"] = settings
                state = state_from_json(body)
            except (SettingsError, ValueError) as exc:
                raise CorruptStoreError(
                    f"meter {meter_id}: stored state unreadable: {exc}"
                ) from exc
            self._settings[meter_id] = settings
            record = MeterRecord(meter_id, bus, unit_id, map_name, bytes(key), epoch, relay)
            out.append(StoredMeter(record, state, windows.get(meter_id), lockouts.get(meter_id)))
        return out

    def token_applied(self, meter_id: str, token_id: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM applied_tokens WHERE meter_id = ? AND token_id = ?", (meter_id, token_id)
        ).fetchone()
        return row is not None

    # ------------------------------------------------------------------ the cycle
    def _write_ledger(self, db: sqlite3.Connection, state: MeterState, now: datetime) -> None:
        db.execute(
            "INSERT INTO ledgers VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (meter_id) DO UPDATE SET"
            " balance = excluded.balance, debt = excluded.debt,"
            " credit_state = excluded.credit_state, state_json = excluded.state_json,"
            " updated_at = excluded.updated_at",
            (
                state.meter_id,
                state.ledger.balance,
                state.ledger.debt,
                str(state.credit),
                ledger_json(state),
                _iso(now),
            ),
        )

    def apply(
        self,
        state: MeterState,
        commands: Sequence[Command],
        now: datetime,
        *,
        token_window: WindowLike | None = None,
        lockout: dict[str, JsonValue] | None = None,
    ) -> list[OutboxRow]:
        """Commit one meter's step; see ``commit_cycle``."""
        return self.commit_cycle([MeterUpdate(state, commands, now, token_window, lockout)])

    def commit_cycle(self, updates: Iterable[MeterUpdate]) -> list[OutboxRow]:
        """Commit a batch of steps in ONE durable transaction: ledgers, token windows,
        applied tokens, lockouts, the event log and the outbox (with fresh per-meter seqs).
        Raises (and commits nothing) on an unknown meter or an already applied token."""
        batch = self._prepare(updates)
        try:
            with self._transaction() as db:
                first_id = self._write_batch(db, batch)
        except sqlite3.IntegrityError as exc:
            if "applied_tokens" in str(exc):
                raise TokenAlreadyAppliedError(
                    f"a token in this batch was already applied: {exc}"
                ) from exc
            raise StoreError(f"commit refused: {exc}") from exc
        self._seq.update(batch.seqs)
        self._settings.update(batch.settings_cache)
        return [
            OutboxRow(first_id + i, r.meter_id, r.seq, r.kind, r.ts, r.body)
            for i, r in enumerate(batch.rows)
        ]

    def _prepare(self, updates: Iterable[MeterUpdate]) -> _Batch:
        batch = _Batch({}, {})
        seqs = batch.seqs
        stamps: dict[datetime, str] = {}
        for update in updates:
            state, meter = update.state, update.state.meter_id
            if meter not in seqs:
                if meter not in self._seq:
                    raise UnknownMeterError(f"meter {meter} is not enrolled")
                seqs[meter] = self._seq[meter]
            ts = stamps.get(update.now) or stamps.setdefault(update.now, _iso(update.now))
            batch.ledgers.append(self._ledger_row(state, ts))
            cached = batch.settings_cache.get(meter) or self._settings.get(meter)
            if cached is not state.settings and cached != state.settings:
                batch.settings.append((json.dumps(settings_to_json(state.settings)), meter))
                batch.settings_cache[meter] = state.settings
            for command in update.commands:
                if isinstance(command, Publish):
                    seqs[meter] += 1
                    body = json.dumps(command.body, separators=(",", ":"))
                    batch.outbox.append((meter, seqs[meter], command.kind, ts, body))
                    if command.kind == "event":
                        batch.events.append((meter, ts, str(command.body.get("event", "")), body))
                    batch.rows.append(
                        OutboxRow(0, meter, seqs[meter], command.kind, update.now, command.body)
                    )
                elif isinstance(command, TopUpDecision) and command.accepted:
                    batch.tokens.append((meter, command.token_id, ts))
            if update.token_window is not None:
                w = update.token_window
                batch.windows.append((meter, w.epoch, w.highest, _to_signed64(w.bitmap)))
            if update.lockout is not None:
                batch.lockouts.append((meter, json.dumps(update.lockout)))
        return batch

    def _write_batch(self, db: sqlite3.Connection, batch: _Batch) -> int:
        """Write a prepared batch inside the open transaction; the first outbox row id."""
        db.executemany(
            "UPDATE ledgers SET balance = ?, debt = ?, credit_state = ?, state_json = ?,"
            " updated_at = ? WHERE meter_id = ?",
            batch.ledgers,
        )
        db.executemany("UPDATE meters SET settings_json = ? WHERE meter_id = ?", batch.settings)
        db.executemany("INSERT INTO applied_tokens VALUES (?, ?, ?)", batch.tokens)
        db.executemany(
            "INSERT INTO token_window VALUES (?, ?, ?, ?) ON CONFLICT (meter_id) DO UPDATE"
            " SET epoch = excluded.epoch, highest = excluded.highest, bitmap = excluded.bitmap",
            batch.windows,
        )
        db.executemany(
            "INSERT INTO keypad_lockout VALUES (?, ?) ON CONFLICT (meter_id) DO UPDATE"
            " SET state_json = excluded.state_json",
            batch.lockouts,
        )
        db.executemany(
            "INSERT INTO event_log (meter_id, ts, event, body_json) VALUES (?, ?, ?, ?)",
            batch.events,
        )
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        first_id = (row[0] if row else 0) + 1
        # One writer inside one transaction: AUTOINCREMENT ids are consecutive.
        db.executemany(
            "INSERT INTO outbox (meter_id, seq, kind, ts, body_json) VALUES (?, ?, ?, ?, ?)",
            batch.outbox,
        )
        db.executemany(
            "UPDATE outbox_seq SET last_seq = ? WHERE meter_id = ?",
            [(s, m) for m, s in batch.seqs.items() if s != self._seq.get(m)],
        )
        return first_id

    @staticmethod
    def _ledger_row(state: MeterState, ts: str) -> tuple[int, int, str, str, str, str]:
        return (
            state.ledger.balance,
            state.ledger.debt,
            str(state.credit),
            ledger_json(state),
            ts,
            state.meter_id,
        )

    # ------------------------------------------------------------------ the outbox
    def _rows(self, sql: str, params: Sequence[object]) -> list[OutboxRow]:
        return [
            OutboxRow(
                i,
                m,
                s,
                k,
                datetime.fromisoformat(t),
                json.loads(b),
                datetime.fromisoformat(a) if a else None,
            )
            for i, m, s, k, t, b, a in self._db.execute(sql, params)
        ]

    def outbox_pending(self, limit: int = 100, after_id: int = 0) -> list[OutboxRow]:
        """Unacknowledged rows in commit order."""
        return self._rows(
            "SELECT id, meter_id, seq, kind, ts, body_json, acked_at FROM outbox"
            " WHERE acked_at IS NULL AND id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        )

    def outbox_since(self, meter_id: str, seq: int) -> list[OutboxRow]:
        """A meter's rows from ``seq`` on (acknowledged or not, while retained), for resend."""
        return self._rows(
            "SELECT id, meter_id, seq, kind, ts, body_json, acked_at FROM outbox"
            " WHERE meter_id = ? AND seq >= ? ORDER BY seq",
            (meter_id, seq),
        )

    def mark_acked(self, ids: Iterable[int], at: datetime) -> None:
        """Record broker acknowledgements. Not synced on its own (the next durable commit
        syncs it): a power cut can only lose acknowledgements, which means a message is
        sent again, never lost."""
        self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            with self._transaction() as db:
                db.executemany(
                    "UPDATE outbox SET acked_at = ? WHERE id = ? AND acked_at IS NULL",
                    [(_iso(at), i) for i in ids],
                )
        finally:
            self._db.execute("PRAGMA synchronous=FULL")

    def purge_acked(self, older_than: datetime) -> int:
        """Delete rows acknowledged before ``older_than``; the seq counters are kept."""
        with self._transaction() as db:
            cursor = db.execute(
                "DELETE FROM outbox WHERE acked_at IS NOT NULL AND acked_at < ?",
                (_iso(older_than),),
            )
        return cursor.rowcount

    # ------------------------------------------------------------------ remote commands
    def claim_command(self, command_id: str, expires_at: datetime, now: datetime) -> bool:
        """Record a signed command as executed; False if it already was (a replay).
        Expired entries are dropped on the way: a command past its expiry is refused
        by its signature check anyway."""
        with self._transaction() as db:
            db.execute("DELETE FROM executed_commands WHERE expires_at < ?", (_iso(now),))
            cursor = db.execute(
                "INSERT OR IGNORE INTO executed_commands VALUES (?, ?, ?)",
                (command_id, _iso(expires_at), _iso(now)),
            )
        return cursor.rowcount == 1

    def outbox_depth(self) -> int:
        depth: int = self._db.execute(
            "SELECT count(*) FROM outbox WHERE acked_at IS NULL"
        ).fetchone()[0]
        return depth

    def last_seq(self, meter_id: str) -> int:
        return self._seq[meter_id]

    def events(self, meter_id: str) -> list[dict[str, JsonValue]]:
        """A meter's event log, oldest first."""
        return [
            json.loads(b)
            for (b,) in self._db.execute(
                "SELECT body_json FROM event_log WHERE meter_id = ? ORDER BY id", (meter_id,)
            )
        ]

    # ---------------------------------------------------------- the drain's fast read
    def outbox_pending_raw(self, limit: int = 256, after_id: int = 0) -> list[RawOutboxRow]:
        """:meth:`outbox_pending` as stored (time and body as text), for the drain, which
        splices the stored JSON into the envelope instead of decoding it."""
        return [
            RawOutboxRow(*r)
            for r in self._db.execute(
                "SELECT id, meter_id, seq, kind, ts, body_json FROM outbox"
                " WHERE acked_at IS NULL AND id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            )
        ]


class RawOutboxRow(NamedTuple):
    """One unacknowledged outbox row as stored: ``ts`` ISO 8601, ``body_json`` the body."""

    id: int
    meter_id: str
    seq: int
    kind: str
    ts: str
    body_json: str
