"""The durable store: SQLite in WAL mode with ``synchronous=FULL``.

One transaction holds everything a step of the core decided for a batch of meters: the
new ledgers, the token counters they credited, the lockout state, the event log and the
outbox rows with their per-meter gap-free ``seq``. A crash therefore either keeps all of
it or none of it; a credit cannot be lost or doubled, and a ``seq`` never skips.

A file is checked before anything is written to it: the SQLite header, our
``application_id`` and the schema version are read from the raw bytes, then
``PRAGMA quick_check`` runs on a read-only connection. A foreign, corrupt or newer file is
refused unchanged.

Threads: every write runs on one writer thread that owns the write connection, in the
order submitted (``commit_cycle_async`` lets the event loop await a durable commit instead
of blocking on its fsync; ``mark_acked`` returns at once, its rows ride in the next
commit). Reads go through a
second connection: WAL readers see only committed transactions, which is what the outbox
drain must see. A third connection copies the WAL into the database file on its own
thread, so no commit pays for a checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Protocol, Self, TypeVar

from pydantic import JsonValue

from gateway.core.commands import Command, Publish, TopUpDecision
from gateway.core.driver import MeterState
from gateway.core.json_forms import (
    SettingsError,
    settings_from_json,
    settings_to_json,
)
from gateway.core.settings import MeterSettings
from gateway.private_files import create_private_file
from gateway.state_row import StateRows, state_from_row
from gateway.store_migrations import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION

SQLITE_MAGIC = b"SQLite format 3\x00"

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Rows per multi-row statement: one bind and step from Python (and one AUTOINCREMENT
#: update) per chunk instead of per row. 128 x 6 parameters stays under SQLite's 999.
_CHUNK = 128
#: The checkpointer runs once about this many pages were written to the WAL since the
#: last run (SQLite's own default for its automatic checkpoint).
CHECKPOINT_PAGES = 1000
#: If the checkpointer falls behind, the writer checkpoints itself past this many pages.
WAL_AUTOCHECKPOINT_PAGES = 16384
#: Acknowledgements ride in the next commit's transaction; without one within this
#: delay, or once this many wait, they are written in one of their own.
ACK_FLUSH_S = 0.25
ACK_FLUSH_ROWS = 1024


def _compact_encoder() -> Callable[[object], str]:
    """``json.dumps(obj, separators=(",", ":"))``, byte for byte, without building an
    encoder per call (half the cost of a small body)."""
    encoder = json.JSONEncoder(separators=(",", ":"))
    make: Any = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return encoder.encode
    iterencode = make(
        None,
        encoder.default,
        json.encoder.encode_basestring_ascii,
        None,
        ":",
        ",",
        False,
        False,
        True,
    )

    def encode(obj: object) -> str:
        return "".join(iterencode(obj, 0))

    return encode


_encode_body = _compact_encoder()


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


class StorageUnavailableError(StoreError):
    """The store cannot write now (disk full, read-only file system, I/O error): nothing
    was written, and the same write may succeed once the cause clears."""


READ_ONLY = "read-only file system"
#: Less free space than this on the store's file system counts as full.
MIN_FREE_BYTES = 1 << 20


def storage_problem(path: Path) -> str | None:
    """Why the file system holding ``path`` cannot take writes now (read-only, full), or
    None: what tells a store that may recover by itself from a broken one."""
    try:
        fs = os.statvfs(path.parent)
    except OSError:
        return None
    if fs.f_flag & os.ST_RDONLY:
        return READ_ONLY
    if fs.f_bavail * fs.f_frsize < MIN_FREE_BYTES:
        return "no space left on the device"
    return None


def _storage_error(exc: sqlite3.Error, what: str) -> StoreError:
    """The typed error for a failed write: unavailable storage (may clear by itself) or
    a refusal of what was asked."""
    if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError) and not isinstance(
        exc, sqlite3.IntegrityError
    ):
        return StorageUnavailableError(f"{what}: {exc}")
    return StoreError(f"{what}: {exc}")


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


_INT64_MAX = (1 << 63) - 1


def _to_signed64(value: int) -> int:
    if not 0 <= value < 1 << 64:
        raise ValueError("token window bitmap must be a 64-bit unsigned int")
    return value - (1 << 64) if value >= 1 << 63 else value


def _from_signed64(value: int) -> int:
    return value + (1 << 64) if value < 0 else value


def _iso(at: datetime) -> str:
    """A time as the store writes it: ISO 8601 in UTC, so that SQL compares it as text
    (a command's ``expires`` may come with any offset)."""
    if at.tzinfo is None:
        raise ValueError("store times must carry a time zone")
    return at.astimezone(UTC).isoformat()


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
        problem = storage_problem(path)
        if problem is not None:
            raise StorageUnavailableError(f"cannot read {path}: {problem} ({exc})") from exc
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
    settings_cache: dict[str, MeterSettings] = field(default_factory=dict)
    ledgers: list[tuple[int, int, str, str, str, str]] = field(default_factory=list)
    settings: list[tuple[str, str]] = field(default_factory=list)
    outbox: list[tuple[str, int, str, str, str]] = field(default_factory=list)
    events: list[tuple[str, str, str, str]] = field(default_factory=list)
    tokens: list[tuple[str, str, str]] = field(default_factory=list)
    windows: dict[str, tuple[str, int, int, int]] = field(default_factory=dict)
    lockouts: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: (meter, seq, kind, now, body) of each outbox row, for the returned OutboxRows
    rows: list[tuple[str, int, str, datetime, dict[str, JsonValue]]] = field(default_factory=list)


_VALUES_SQL: dict[tuple[str, int, int, str], str] = {}


def _values_sql(head: str, width: int, count: int, tail: str) -> str:
    key = (head, width, count, tail)
    sql = _VALUES_SQL.get(key)
    if sql is None:
        one = "(" + ",".join("?" * width) + ")"
        sql = _VALUES_SQL[key] = head + ",".join([one] * count) + tail
    return sql


def _insert_rows(
    db: sqlite3.Connection,
    head: str,
    width: int,
    rows: Sequence[tuple[object, ...]],
    tail: str = "",
) -> None:
    """INSERT ``rows`` in order, up to ``_CHUNK`` rows per statement. Few statements also
    mean few GIL hand-overs: each step releases and retakes it, which costs the writer
    thread up to a switch interval while the event loop is busy."""
    for start in range(0, len(rows), _CHUNK):
        part = rows[start : start + _CHUNK]
        db.execute(
            _values_sql(head, width, len(part), tail), list(itertools.chain.from_iterable(part))
        )


class _Checkpointer:
    """Copies committed WAL frames into the database file on its own thread and
    connection, once about CHECKPOINT_PAGES were written (an estimate: SQLite does not
    tell Python). PASSIVE: it neither waits for nor blocks the writer or the readers, and
    a crash in the middle leaves the WAL, which still holds every frame, in charge."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._pages = 0
        self._due = threading.Event()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def wrote(self, pages: int) -> None:
        """About ``pages`` pages were committed (called by the writer thread only)."""
        self._pages += pages
        if self._pages < CHECKPOINT_PAGES:
            return
        self._pages = 0
        if self._thread is None:
            with self._lock:
                if self._thread is None and not self._closing.is_set():
                    self._thread = threading.Thread(
                        target=self._run, name="store-checkpoint", daemon=True
                    )
                    self._thread.start()
        self._due.set()

    def _run(self) -> None:
        try:
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            log.warning("checkpointer cannot open %s: %s", self._path, exc)
            return
        try:
            db.execute("PRAGMA synchronous=FULL")
            while True:
                self._due.wait()
                if self._closing.is_set():
                    return
                self._due.clear()
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:
                    log.warning("checkpoint of %s failed: %s", self._path, exc)
        finally:
            db.close()

    def close(self) -> None:
        self._closing.set()
        self._due.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join()


_ack_failures_logged_at = 0.0
#: While acknowledgements cannot be written (a full disk), say so at most this often.
ACK_FAILURE_LOG_S = 60.0


def _log_failure(future: Future[None]) -> None:
    global _ack_failures_logged_at  # noqa: PLW0603 - one clock for the whole process
    if future.cancelled() or (exc := future.exception()) is None:
        return
    now = time.monotonic()
    if now - _ack_failures_logged_at >= ACK_FAILURE_LOG_S:
        _ack_failures_logged_at = now
        log.error("recording broker acknowledgements failed (they will be resent): %s", exc)


#: A meter's rows that go with it when it is removed, children before ``meters``.
_METER_TABLES = (
    "token_window",
    "keypad_lockout",
    "applied_tokens",
    "ledgers",
    "outbox_seq",
    "meters",
)


class Store:
    """The gateway's one SQLite file. Thread-safe: writes are serialised on the store's
    writer thread (the only user of the write connection), reads share a lock."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        self._seq: dict[str, int] = dict(
            connection.execute("SELECT meter_id, last_seq FROM outbox_seq").fetchall()
        )
        self._settings: dict[str, MeterSettings] = {}
        #: the writer thread's: writes ledgers.state_json
        self._state_rows = StateRows()
        # The checkpointer keeps the WAL short; this is only the fallback if it lags.
        connection.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self._checkpointer = _Checkpointer(path)
        self._reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._reader.execute("PRAGMA query_only=ON")
        self._read_lock = threading.Lock()
        #: outbox id -> acked_at of acknowledgements not yet written: reads through this
        #: store apply them, so an ack is visible as soon as it is recorded
        self._acking: dict[int, str] = {}
        self._ack_lock = threading.Lock()
        self._ack_timer: threading.Timer | None = None
        self._closed = False

    @classmethod
    def open(cls, path: str | Path) -> Store:
        """Open (or create) the store at ``path`` and migrate it to the current schema."""
        path = Path(path)
        if storage_problem(path) == READ_ONLY:
            # SQLite would open it read-only and stay so after the file system recovers.
            raise StorageUnavailableError(f"cannot open {path} for writing: {READ_ONLY}")
        version = _check_file(path)
        try:
            # Owner-only whatever the umask: SQLite gives -wal and -shm the same mode.
            create_private_file(path)
        except OSError as exc:
            raise StoreError(f"cannot create {path}: {exc.strerror}") from exc
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
            return cls(db, path)
        except sqlite3.DatabaseError as exc:
            db.close()
            problem = storage_problem(path)
            if problem is not None:
                raise StorageUnavailableError(f"cannot open {path}: {problem} ({exc})") from exc
            raise CorruptStoreError(f"{path}: {exc}") from exc

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
        """Finish the queued writes, write the waiting acknowledgements, then close."""
        if not self._closed:
            self._closed = True
            with self._ack_lock:
                if self._ack_timer is not None:
                    self._ack_timer.cancel()
            self._writer.submit(self._flush_acks).add_done_callback(_log_failure)
        self._writer.shutdown(wait=True)
        self._checkpointer.close()
        with self._read_lock:
            self._reader.close()
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

    # ------------------------------------------------------------------ threads
    def _submit(self, fn: Callable[..., _T], *args: object) -> Future[_T]:
        try:
            return self._writer.submit(fn, *args)
        except RuntimeError as exc:
            raise StoreError(f"store {self.path} is closed") from exc

    def _on_writer(self, fn: Callable[..., _T], *args: object) -> _T:
        """Run ``fn`` on the writer thread, after every write queued before it; wait."""
        return self._submit(fn, *args).result()

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        with self._read_lock:
            return self._reader.execute(sql, params).fetchall()

    def _acks_in_flight(self) -> dict[int, str]:
        with self._ack_lock:
            return dict(self._acking) if self._acking else {}

    def _take_acks(self, db: sqlite3.Connection) -> list[tuple[str, int]]:
        """Write the waiting acknowledgements in the open transaction; the caller calls
        ``_acks_written`` with them once it committed (a rollback leaves them waiting)."""
        with self._ack_lock:
            pairs = [(stamp, i) for i, stamp in self._acking.items()]
        by_stamp: dict[str, list[int]] = {}
        for stamp, i in pairs:
            by_stamp.setdefault(stamp, []).append(i)
        for stamp, ids in by_stamp.items():
            for start in range(0, len(ids), 500):
                part = ids[start : start + 500]
                marks = ",".join("?" * len(part))
                db.execute(
                    f"UPDATE outbox SET acked_at = ? WHERE acked_at IS NULL AND id IN ({marks})",  # noqa: S608
                    [stamp, *part],
                )
        return pairs

    def _acks_written(self, pairs: list[tuple[str, int]]) -> None:
        if pairs:
            with self._ack_lock:
                for _stamp, i in pairs:
                    self._acking.pop(i, None)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; anything failing (the COMMIT too: a full disk or an
        I/O error shows there) leaves no transaction open, so the next one can start."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise

    def schema_version(self) -> int:
        version: int = self._read("PRAGMA user_version")[0][0]
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
        self._on_writer(self._add_meters, list(meters), now)

    def _add_meters(self, meters: Sequence[tuple[MeterRecord, MeterState]], now: datetime) -> None:
        current = ""
        seqs: dict[str, int] = {}
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
                    # A meter enrolled again after remove_meter goes on from the seq its
                    # rows still in the outbox reached (a seq is never reused).
                    (seq,) = db.execute(
                        "SELECT COALESCE(MAX(seq), 0) FROM outbox WHERE meter_id = ?",
                        (record.meter_id,),
                    ).fetchone()
                    db.execute("INSERT INTO outbox_seq VALUES (?, ?)", (record.meter_id, seq))
                    seqs[record.meter_id] = seq
        except sqlite3.IntegrityError as exc:
            raise DuplicateMeterError(f"meter {current} is already enrolled") from exc
        for record, state in meters:
            self._seq[record.meter_id] = seqs[record.meter_id]
            self._settings[record.meter_id] = state.settings
        self._checkpointer.wrote(2 * len(meters))

    def update_meter(
        self, record: MeterRecord, state: MeterState, commands: Sequence[Command], now: datetime
    ) -> None:
        """Correct an enrolled meter in ONE transaction: its address, map, key and relay
        output (``record``), its state (settings) and the events that tell the headend
        (``commands``, as ``apply`` commits them). Raises UnknownMeterError."""
        if record.meter_id != state.meter_id:
            raise ValueError("record and state name different meters")
        self._on_writer(self._change_meter, MeterUpdate(state, commands, now), record)

    def remove_meter(self, state: MeterState, commands: Sequence[Command], now: datetime) -> None:
        """Unenrol a meter in ONE transaction: its last events (``commands``, e.g. the
        removal for the headend) are queued, then its meter, ledger, token and lockout rows
        are deleted. Its outbox rows stay until sent and purged; its event log stays."""
        self._on_writer(self._change_meter, MeterUpdate(state, commands, now), None)

    def _change_meter(self, update: MeterUpdate, record: MeterRecord | None) -> None:
        """``update_meter`` with a record, ``remove_meter`` without."""
        meter = update.state.meter_id
        batch = self._prepare([update], returning=False)
        with self._transaction() as db:
            acks = self._take_acks(db)
            self._write_batch(db, batch)
            if record is not None:
                db.execute(
                    "UPDATE meters SET bus = ?, unit_id = ?, map_name = ?, meter_key = ?,"
                    " key_epoch = ?, relay_output = ? WHERE meter_id = ?",
                    (
                        record.bus,
                        record.unit_id,
                        record.map_name,
                        record.meter_key,
                        record.key_epoch,
                        record.relay_output,
                        meter,
                    ),
                )
            else:
                for table in _METER_TABLES:
                    db.execute(f"DELETE FROM {table} WHERE meter_id = ?", (meter,))  # noqa: S608
        self._acks_written(acks)
        if record is not None:
            self._seq.update(batch.seqs)
            self._settings.update(batch.settings_cache)
        else:
            self._seq.pop(meter, None)
            self._settings.pop(meter, None)
        self._checkpointer.wrote(4)

    def load_meters(self) -> list[StoredMeter]:
        """Every enrolled meter with its state, token window and lockout, by meter id."""
        return self._on_writer(self._load_meters)

    def _load_meters(self) -> list[StoredMeter]:
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
                state = state_from_row(state_json, settings)
            except (SettingsError, ValueError) as exc:
                raise CorruptStoreError(
                    f"meter {meter_id}: stored state unreadable: {exc}"
                ) from exc
            self._settings[meter_id] = settings
            if meter_id not in self._seq:  # enrolled by another process since this opened
                self._seq[meter_id] = self._last_seq_stored(meter_id)
            record = MeterRecord(meter_id, bus, unit_id, map_name, bytes(key), epoch, relay)
            out.append(StoredMeter(record, state, windows.get(meter_id), lockouts.get(meter_id)))
        return out

    def _last_seq_stored(self, meter_id: str) -> int:
        row = self._db.execute(
            "SELECT last_seq FROM outbox_seq WHERE meter_id = ?", (meter_id,)
        ).fetchone()
        return int(row[0]) if row else 0

    def token_applied(self, meter_id: str, token_id: str) -> bool:
        rows = self._read(
            "SELECT 1 FROM applied_tokens WHERE meter_id = ? AND token_id = ?", (meter_id, token_id)
        )
        return bool(rows)

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
                self._state_rows.row(state),
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

    def commit_cycle(
        self, updates: Iterable[MeterUpdate], *, returning: bool = True
    ) -> list[OutboxRow]:
        """Commit a batch of steps in ONE durable transaction: ledgers, token windows,
        applied tokens, lockouts, the event log and the outbox (with fresh per-meter seqs).
        Returns the outbox rows written, or ``[]`` with ``returning=False`` (the gateway's
        core task does not read them, and building them is a tenth of a big commit).
        Raises (and commits nothing) on an unknown meter or an already applied token."""
        return self._on_writer(self._commit, list(updates), returning)

    async def commit_cycle_async(
        self, updates: Iterable[MeterUpdate], *, returning: bool = True
    ) -> list[OutboxRow]:
        """``commit_cycle`` awaited from an event loop, which runs on while SQLite syncs.
        Commits happen in the order they are called. Cancelling the wait does not cancel
        a commit already started: the transaction is never cut in half."""
        return await asyncio.wrap_future(self._submit(self._commit, list(updates), returning))

    def _commit(self, updates: Sequence[MeterUpdate], returning: bool = True) -> list[OutboxRow]:
        batch = self._prepare(updates, returning)
        try:
            with self._transaction() as db:
                acks = self._take_acks(db)
                first_id = self._write_batch(db, batch)
        except sqlite3.IntegrityError as exc:
            if "applied_tokens" in str(exc):
                raise TokenAlreadyAppliedError(
                    f"a token in this batch was already applied: {exc}"
                ) from exc
            raise StoreError(f"commit refused: {exc}") from exc
        except sqlite3.Error as exc:
            raise _storage_error(exc, "commit failed") from exc
        self._acks_written(acks)
        self._seq.update(batch.seqs)
        self._settings.update(batch.settings_cache)
        # A page per meter (their ledger rows are scattered), rows appended share pages.
        self._checkpointer.wrote(len(batch.ledgers) + (len(batch.outbox) + len(acks)) // 8 + 4)
        return [
            OutboxRow(first_id + i, meter, seq, kind, ts, body)
            for i, (meter, seq, kind, ts, body) in enumerate(batch.rows)
        ]

    def _prepare(self, updates: Sequence[MeterUpdate], returning: bool = True) -> _Batch:
        batch = _Batch({})
        seqs, known = batch.seqs, self._seq
        outbox, events, rows = batch.outbox, batch.events, batch.rows
        stamps: dict[datetime, str] = {}
        #: a meter stepped twice in a batch: only its last state is written
        last: dict[str, tuple[MeterState, str]] = {}
        for update in updates:
            state = update.state
            meter = state.meter_id
            seq = seqs.get(meter)
            if seq is None:
                seq = known.get(meter)
                if seq is None:
                    raise UnknownMeterError(f"meter {meter} is not enrolled")
            now = update.now
            ts = stamps.get(now) or stamps.setdefault(now, _iso(now))
            last[meter] = (state, ts)
            for command in update.commands:
                if isinstance(command, Publish):
                    seq += 1
                    kind, body = command.kind, command.body
                    text = _encode_body(body)
                    outbox.append((meter, seq, kind, ts, text))
                    if kind == "event":
                        events.append((meter, ts, str(body.get("event", "")), text))
                    if returning:
                        rows.append((meter, seq, kind, now, body))
                elif isinstance(command, TopUpDecision) and command.accepted:
                    batch.tokens.append((meter, command.token_id, ts))
            seqs[meter] = seq
            if update.token_window is not None:
                w = update.token_window
                batch.windows[meter] = (meter, w.epoch, w.highest, _to_signed64(w.bitmap))
            if update.lockout is not None:
                batch.lockouts[meter] = (meter, json.dumps(update.lockout))
        committed = self._settings
        for meter, (state, ts) in last.items():
            ledger = state.ledger
            batch.ledgers.append(
                (
                    ledger.balance,
                    ledger.debt,
                    str(state.credit),
                    self._state_rows.row(state),
                    ts,
                    meter,
                )
            )
            settings = state.settings
            cached = committed.get(meter)
            if cached is not settings and cached != settings:
                batch.settings.append((json.dumps(settings_to_json(settings)), meter))
                batch.settings_cache[meter] = settings
        return batch

    def _write_batch(self, db: sqlite3.Connection, batch: _Batch) -> int:
        """Write a prepared batch inside the open transaction; the first outbox row id."""
        # An upsert, so that many rows go in one statement; every meter here is enrolled
        # (checked in _prepare), so it always updates.
        _insert_rows(
            db,
            "INSERT INTO ledgers (balance, debt, credit_state, state_json, updated_at, meter_id)"
            " VALUES ",
            6,
            batch.ledgers,
            " ON CONFLICT (meter_id) DO UPDATE SET balance = excluded.balance,"
            " debt = excluded.debt, credit_state = excluded.credit_state,"
            " state_json = excluded.state_json, updated_at = excluded.updated_at",
        )
        if batch.settings:
            db.executemany("UPDATE meters SET settings_json = ? WHERE meter_id = ?", batch.settings)
        if batch.tokens:
            db.executemany("INSERT INTO applied_tokens VALUES (?, ?, ?)", batch.tokens)
        if batch.windows:
            db.executemany(
                "INSERT INTO token_window VALUES (?, ?, ?, ?) ON CONFLICT (meter_id) DO UPDATE"
                " SET epoch = excluded.epoch, highest = excluded.highest,"
                " bitmap = excluded.bitmap",
                list(batch.windows.values()),
            )
        if batch.lockouts:
            db.executemany(
                "INSERT INTO keypad_lockout VALUES (?, ?) ON CONFLICT (meter_id) DO UPDATE"
                " SET state_json = excluded.state_json",
                list(batch.lockouts.values()),
            )
        if batch.events:
            db.executemany(
                "INSERT INTO event_log (meter_id, ts, event, body_json) VALUES (?, ?, ?, ?)",
                batch.events,
            )
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        first_id = (row[0] if row else 0) + 1
        # One writer inside one transaction: AUTOINCREMENT ids are consecutive.
        _insert_rows(
            db, "INSERT INTO outbox (meter_id, seq, kind, ts, body_json) VALUES ", 5, batch.outbox
        )
        _insert_rows(
            db,
            "INSERT INTO outbox_seq (meter_id, last_seq) VALUES ",
            2,
            [(m, s) for m, s in batch.seqs.items() if s != self._seq[m]],
            " ON CONFLICT (meter_id) DO UPDATE SET last_seq = excluded.last_seq",
        )
        return first_id

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
            for i, m, s, k, t, b, a in self._read(sql, params)
        ]

    def outbox_pending(self, limit: int = 100, after_id: int = 0) -> list[OutboxRow]:
        """Unacknowledged rows in commit order. Never waits for the writer."""
        return [
            OutboxRow(
                r.id,
                r.meter_id,
                r.seq,
                r.kind,
                datetime.fromisoformat(r.ts),
                json.loads(r.body_json),
            )
            for r in self.outbox_pending_raw(limit, after_id)
        ]

    def outbox_since(self, meter_id: str, seq: int, limit: int = -1) -> list[OutboxRow]:
        """A meter's rows from ``seq`` on (acknowledged or not, while retained), for
        resend; at most ``limit`` of them (-1: all)."""
        acking = self._acks_in_flight()
        rows = self._rows(
            "SELECT id, meter_id, seq, kind, ts, body_json, acked_at FROM outbox"
            " WHERE meter_id = ? AND seq >= ? ORDER BY seq LIMIT ?",
            (meter_id, min(seq, _INT64_MAX), limit),
        )
        if not acking:
            return rows
        return [
            replace(r, acked_at=datetime.fromisoformat(acking[r.id]))
            if r.acked_at is None and r.id in acking
            else r
            for r in rows
        ]

    def outbox_seqs_since(self, meter_id: str, seq: int, limit: int) -> list[int]:
        """The seqs :meth:`outbox_since` would return (at most ``limit``), unread."""
        return [
            s
            for (s,) in self._read(
                "SELECT seq FROM outbox WHERE meter_id = ? AND seq >= ? ORDER BY seq LIMIT ?",
                (meter_id, min(seq, _INT64_MAX), limit),
            )
        ]

    def mark_acked(self, ids: Iterable[int], at: datetime) -> None:
        """Record broker acknowledgements without waiting. They are written in the next
        commit's transaction (or alone, unsynced, after ACK_FLUSH_S or once ACK_FLUSH_ROWS
        wait, and at close), so a power cut or crash can only lose acknowledgements, which
        means a message is sent again, never lost. This store's reads see them at once."""
        if self._closed:
            raise StoreError(f"store {self.path} is closed")
        stamp = _iso(at)
        with self._ack_lock:
            for i in ids:
                self._acking.setdefault(i, stamp)
            if not self._acking:
                return
            now = len(self._acking) >= ACK_FLUSH_ROWS
            if self._ack_timer is None or now:
                if self._ack_timer is not None:
                    self._ack_timer.cancel()
                self._ack_timer = threading.Timer(0 if now else ACK_FLUSH_S, self._ack_due)
                self._ack_timer.daemon = True
                self._ack_timer.start()

    def _ack_due(self) -> None:
        with self._ack_lock:
            self._ack_timer = None
            if not self._acking or self._closed:
                return
        with contextlib.suppress(StoreError):
            self._submit(self._flush_acks).add_done_callback(_log_failure)

    def _flush_acks(self) -> None:
        with self._ack_lock:
            if not self._acking:
                return  # a commit took them meanwhile
        self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            with self._transaction() as db:
                acks = self._take_acks(db)
        finally:
            self._db.execute("PRAGMA synchronous=FULL")
        self._acks_written(acks)
        self._checkpointer.wrote(len(acks) // 8 + 2)

    def purge_acked(self, older_than: datetime) -> int:
        """Delete rows acknowledged before ``older_than``; the seq counters are kept."""
        return self._on_writer(self._purge_acked, older_than)

    async def purge_acked_async(self, older_than: datetime) -> int:
        """``purge_acked`` awaited from an event loop, which runs on meanwhile."""
        return await asyncio.wrap_future(self._submit(self._purge_acked, older_than))

    def _purge_acked(self, older_than: datetime) -> int:
        with self._transaction() as db:
            acks = self._take_acks(db)
            cursor = db.execute(
                "DELETE FROM outbox WHERE acked_at IS NOT NULL AND acked_at < ?",
                (_iso(older_than),),
            )
        self._acks_written(acks)
        self._checkpointer.wrote((cursor.rowcount + len(acks)) // 8 + 2)
        return cursor.rowcount

    # ------------------------------------------------------------------ remote commands
    def claim_command(self, command_id: str, expires_at: datetime, now: datetime) -> bool:
        """Record a signed command as executed; False if it already was (a replay).
        Expired entries are dropped on the way: a command past its expiry is refused
        by its signature check anyway."""
        return self._on_writer(self._claim_command, command_id, expires_at, now)

    async def claim_command_async(
        self, command_id: str, expires_at: datetime, now: datetime
    ) -> bool:
        """``claim_command`` awaited from an event loop, which runs on meanwhile."""
        return await asyncio.wrap_future(
            self._submit(self._claim_command, command_id, expires_at, now)
        )

    def _claim_command(self, command_id: str, expires_at: datetime, now: datetime) -> bool:
        try:
            with self._transaction() as db:
                db.execute("DELETE FROM executed_commands WHERE expires_at < ?", (_iso(now),))
                cursor = db.execute(
                    "INSERT OR IGNORE INTO executed_commands VALUES (?, ?, ?)",
                    (command_id, _iso(expires_at), _iso(now)),
                )
        except sqlite3.Error as exc:
            raise _storage_error(exc, "recording the command failed") from exc
        return cursor.rowcount == 1

    def executed_commands(self, now: datetime) -> list[tuple[str, datetime, datetime]]:
        """Signed commands executed and not yet expired: (id, expires, executed), for an
        export to carry to a replacement gateway (so a captured one fails there too)."""
        return [
            (i, datetime.fromisoformat(e), datetime.fromisoformat(x))
            for i, e, x in self._read(
                "SELECT command_id, expires_at, executed_at FROM executed_commands"
                " WHERE expires_at >= ? ORDER BY executed_at",
                (_iso(now),),
            )
        ]

    def restore_executed_commands(self, rows: Sequence[tuple[str, datetime, datetime]]) -> int:
        """Record commands another gateway executed (from an export); how many were new."""
        return self._on_writer(self._restore_executed, list(rows))

    def _restore_executed(self, rows: list[tuple[str, datetime, datetime]]) -> int:
        try:
            with self._transaction() as db:
                before = db.total_changes
                db.executemany(
                    "INSERT OR IGNORE INTO executed_commands VALUES (?, ?, ?)",
                    [(i, _iso(e), _iso(x)) for i, e, x in rows],
                )
                return db.total_changes - before
        except sqlite3.Error as exc:
            raise _storage_error(exc, "recording executed commands failed") from exc

    async def release_command_async(self, command_id: str) -> None:
        """Forget a claimed command that could not be carried out (its step did not
        commit), so that the headend may send it again."""
        await asyncio.wrap_future(self._submit(self._release_command, command_id))

    def _release_command(self, command_id: str) -> None:
        try:
            with self._transaction() as db:
                db.execute("DELETE FROM executed_commands WHERE command_id = ?", (command_id,))
        except sqlite3.Error as exc:
            raise _storage_error(exc, "releasing the command failed") from exc

    def outbox_depth(self) -> int:
        """Unacknowledged rows. Never waits for the writer."""
        acking = self._acks_in_flight()
        if not acking:
            depth: int = self._read("SELECT count(*) FROM outbox WHERE acked_at IS NULL")[0][0]
            return depth
        # One read transaction: the acks queued before it either are in its snapshot
        # (no longer counted) or are subtracted here, never both.
        ids = sorted(acking)
        unacked = "SELECT count(*) FROM outbox WHERE acked_at IS NULL"
        with self._read_lock:
            db = self._reader
            db.execute("BEGIN")
            try:
                depth = db.execute(unacked).fetchone()[0]
                for start in range(0, len(ids), 500):
                    part = ids[start : start + 500]
                    marks = ",".join("?" * len(part))
                    in_flight = f"{unacked} AND id IN ({marks})"
                    depth -= db.execute(in_flight, part).fetchone()[0]
            finally:
                db.execute("COMMIT")
        return depth

    def last_seq(self, meter_id: str) -> int:
        return self._seq[meter_id]

    def events(self, meter_id: str) -> list[dict[str, JsonValue]]:
        """A meter's event log, oldest first."""
        return [
            json.loads(b)
            for (b,) in self._read(
                "SELECT body_json FROM event_log WHERE meter_id = ? ORDER BY id", (meter_id,)
            )
        ]

    # ---------------------------------------------------------- the drain's fast read
    def outbox_pending_raw(self, limit: int = 256, after_id: int = 0) -> list[RawOutboxRow]:
        """:meth:`outbox_pending` as stored (time and body as text), for the drain, which
        splices the stored JSON into the envelope instead of decoding it. Acknowledgements
        not yet written count as written. Never waits for the writer."""
        acking = self._acks_in_flight()
        out: list[RawOutboxRow] = []
        while True:
            want = limit - len(out)
            rows = [
                RawOutboxRow(*r)
                for r in self._read(
                    "SELECT id, meter_id, seq, kind, ts, body_json FROM outbox"
                    " WHERE acked_at IS NULL AND id > ? ORDER BY id LIMIT ?",
                    (after_id, want),
                )
            ]
            out += [r for r in rows if r.id not in acking] if acking else rows
            if len(rows) < want or len(out) >= limit:
                return out
            after_id = rows[-1].id


class RawOutboxRow(NamedTuple):
    """One unacknowledged outbox row as stored: ``ts`` ISO 8601, ``body_json`` the body."""

    id: int
    meter_id: str
    seq: int
    kind: str
    ts: str
    body_json: str
