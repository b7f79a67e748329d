"""The cycle commit: everything a step of the core decided for a batch of meters, in ONE
durable transaction.

The new ledgers, the token counters they credited, the lockout state, the event log and
the outbox rows with their per-meter gap-free ``seq`` commit together: a crash keeps all
of it or none of it, so a credit cannot be lost or doubled and a ``seq`` never skips.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import JsonValue

from gateway.core.commands import Command, Publish, TopUpDecision
from gateway.core.meter_state import MeterState
from gateway.core.settings import MeterSettings
from gateway.forms import settings_to_json
from gateway.store.base import StoreBase
from gateway.store.errors import (
    StoreError,
    TokenAlreadyAppliedError,
    UnknownMeterError,
    storage_error,
)
from gateway.store.records import MeterUpdate, OutboxRow, WindowLike, iso, to_signed64
from gateway.store.state_row import StateRows

#: Rows per multi-row statement: one bind and step from Python (and one AUTOINCREMENT
#: update) per chunk instead of per row. 128 x 6 parameters stays under SQLite's 999.
_CHUNK = 128

#: An outbox body as stored and published (compact). One encoder for every body:
#: ``json.dumps(body, separators=...)`` builds an encoder object per call, about twice as
#: slow on the core's reading and balance bodies. Still, each call builds its C encoder
#: anew: 6,500 instructions (about 0.7 µs) a body more than keeping CPython's private
#: ``c_make_encoder`` did, some 14 ms a 10,000-reading cycle (callgrind, docs/benchmarks.md).
encode_body = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode

_LEDGER_UPSERT = (
    "INSERT INTO ledgers (balance, debt, credit_state, state_json, updated_at, meter_id) VALUES ",
    6,
    # An upsert, so that many rows go in one statement; every meter here is enrolled, so
    # in a cycle it always updates.
    " ON CONFLICT (meter_id) DO UPDATE SET balance = excluded.balance,"
    " debt = excluded.debt, credit_state = excluded.credit_state,"
    " state_json = excluded.state_json, updated_at = excluded.updated_at",
)


@dataclass(slots=True)
class Batch:
    """The rows one commit writes, prepared before the transaction opens."""

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
    #: (epoch, meter) of each key change
    key_changes: list[tuple[int, str]] = field(default_factory=list)
    #: (meter, seq, kind, now, body) of each outbox row, for the returned OutboxRows
    rows: list[tuple[str, int, str, datetime, dict[str, JsonValue]]] = field(default_factory=list)


def ledger_row(rows: StateRows, state: MeterState, ts: str) -> tuple[int, int, str, str, str, str]:
    """A ``ledgers`` row in the order of ``upsert_ledgers``."""
    ledger = state.ledger
    return (ledger.balance, ledger.debt, str(state.credit), rows.row(state), ts, state.meter_id)


def upsert_ledgers(db: sqlite3.Connection, rows: Sequence[tuple[object, ...]]) -> None:
    head, width, tail = _LEDGER_UPSERT
    insert_rows(db, head, width, rows, tail)


def prepare(
    updates: Sequence[MeterUpdate],
    known: dict[str, int],
    committed: dict[str, MeterSettings],
    state_rows: StateRows,
    returning: bool = True,
) -> Batch:
    """The rows of ``updates``, given each meter's last seq (``known``) and its settings
    last committed. Raises UnknownMeterError for a meter not in ``known``."""
    batch = Batch({})
    seqs = batch.seqs
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
        ts = stamps.get(now) or stamps.setdefault(now, iso(now))
        last[meter] = (state, ts)
        for command in update.commands:
            if isinstance(command, Publish):
                seq += 1
                kind, body = command.kind, command.body
                text = encode_body(body)
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
            batch.windows[meter] = (meter, w.epoch, w.highest, to_signed64(w.bitmap))
        if update.lockout is not None:
            batch.lockouts[meter] = (meter, json.dumps(update.lockout))
        if update.key_epoch is not None:
            batch.key_changes.append((update.key_epoch, meter))
    for meter, (state, ts) in last.items():
        batch.ledgers.append(ledger_row(state_rows, state, ts))
        settings = state.settings
        cached = committed.get(meter)
        if cached is not settings and cached != settings:
            batch.settings.append((json.dumps(settings_to_json(settings)), meter))
            batch.settings_cache[meter] = settings
    return batch


def write_batch(db: sqlite3.Connection, batch: Batch, known: dict[str, int]) -> int:
    """Write a prepared batch inside the open transaction; the first outbox row id."""
    upsert_ledgers(db, batch.ledgers)
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
    for epoch, meter in batch.key_changes:
        change_key(db, meter, epoch)
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
    insert_rows(
        db, "INSERT INTO outbox (meter_id, seq, kind, ts, body_json) VALUES ", 5, batch.outbox
    )
    insert_rows(
        db,
        "INSERT INTO outbox_seq (meter_id, last_seq) VALUES ",
        2,
        [(m, s) for m, s in batch.seqs.items() if s != known[m]],
        " ON CONFLICT (meter_id) DO UPDATE SET last_seq = excluded.last_seq",
    )
    return first_id


def change_key(db: sqlite3.Connection, meter: str, epoch: int) -> None:
    """Inside the cycle's transaction: the meter's key becomes the one installed for
    ``epoch``, and the installed keys of the epochs it passed are dropped."""
    row = db.execute(
        "SELECT meter_key FROM meter_keys WHERE meter_id = ? AND epoch = ?", (meter, epoch)
    ).fetchone()
    if row is None:
        raise StoreError(f"meter {meter}: no key installed for epoch {epoch}")
    db.execute(
        "UPDATE meters SET meter_key = ?, key_epoch = ? WHERE meter_id = ?", (row[0], epoch, meter)
    )
    db.execute("DELETE FROM meter_keys WHERE meter_id = ? AND epoch <= ?", (meter, epoch))


_VALUES_SQL: dict[tuple[str, int, int, str], str] = {}


def insert_rows(
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
        key = (head, width, len(part), tail)
        sql = _VALUES_SQL.get(key)
        if sql is None:
            one = "(" + ",".join("?" * width) + ")"
            sql = _VALUES_SQL[key] = head + ",".join([one] * len(part)) + tail
        db.execute(sql, list(itertools.chain.from_iterable(part)))


class CycleRoom(StoreBase):
    """``Store``'s cycle commit."""

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
        return self._writer.run(self._commit, list(updates), returning)

    async def commit_cycle_async(
        self, updates: Iterable[MeterUpdate], *, returning: bool = True
    ) -> list[OutboxRow]:
        """``commit_cycle`` awaited from an event loop, which runs on while SQLite syncs.
        Commits happen in the order they are called. Cancelling the wait does not cancel
        a commit already started: the transaction is never cut in half."""
        return await self._writer.run_async(self._commit, list(updates), returning)

    def _commit(self, updates: Sequence[MeterUpdate], returning: bool = True) -> list[OutboxRow]:
        batch = prepare(updates, self._seq, self._settings, self._state_rows, returning)
        try:
            with self._acks.transaction() as db:
                first_id = write_batch(db, batch, self._seq)
        except sqlite3.IntegrityError as exc:
            if "applied_tokens" in str(exc):
                raise TokenAlreadyAppliedError(
                    f"a token in this batch was already applied: {exc}"
                ) from exc
            raise StoreError(f"commit refused: {exc}") from exc
        except sqlite3.Error as exc:
            raise storage_error(exc, "commit failed") from exc
        self._seq.update(batch.seqs)
        self._settings.update(batch.settings_cache)
        # A page per meter (their ledger rows are scattered), rows appended share pages.
        self._writer.wrote(len(batch.ledgers) + len(batch.outbox) // 8 + 4)
        return [
            OutboxRow(first_id + i, meter, seq, kind, ts, body)
            for i, (meter, seq, kind, ts, body) in enumerate(batch.rows)
        ]
