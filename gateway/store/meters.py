"""Enrolled meters: added, corrected, removed and loaded, each change in ONE transaction
with the events that tell the headend."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import datetime

from pydantic import JsonValue

from gateway.core.commands import Command
from gateway.core.meter_state import MeterState
from gateway.forms import SettingsError, settings_from_json, settings_to_json
from gateway.store.base import StoreBase
from gateway.store.cycle import ledger_row, prepare, upsert_ledgers, write_batch
from gateway.store.errors import (
    CorruptStoreError,
    DuplicateMeterError,
    StoreError,
    UnknownMeterError,
)
from gateway.store.records import (
    MeterRecord,
    MeterUpdate,
    StoredMeter,
    TokenWindow,
    from_signed64,
    iso,
)
from gateway.store.state_row import state_from_row

#: A meter's rows that go with it when it is removed, children before ``meters``.
_METER_TABLES = (
    "meter_keys",
    "token_window",
    "keypad_lockout",
    "applied_tokens",
    "ledgers",
    "outbox_seq",
    "meters",
)


class MetersRoom(StoreBase):
    """``Store``'s enrolment and the reads about one meter."""

    def add_meter(self, record: MeterRecord, state: MeterState, now: datetime) -> None:
        """Enrol a meter with its initial state."""
        self.add_meters([(record, state)], now)

    def add_meters(self, meters: Sequence[tuple[MeterRecord, MeterState]], now: datetime) -> None:
        """Enrol several meters in ONE transaction: all of them or, on any error, none."""
        for record, state in meters:
            if record.meter_id != state.meter_id:
                raise ValueError("record and state name different meters")
        self._writer.run(self._add_meters, list(meters), now)

    def _add_meters(self, meters: Sequence[tuple[MeterRecord, MeterState]], now: datetime) -> None:
        current = ""
        seqs: dict[str, int] = {}
        ts = iso(now)
        try:
            with self._writer.transaction() as db:
                for record, state in meters:
                    current = record.meter_id
                    db.execute(
                        "INSERT INTO meters (meter_id, bus, unit_id, map_name, meter_key,"
                        " key_epoch, settings_json, enrolled_at, relay_output, control_secret)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            record.meter_id,
                            record.bus,
                            record.unit_id,
                            record.map_name,
                            record.meter_key,
                            record.key_epoch,
                            json.dumps(settings_to_json(state.settings)),
                            ts,
                            record.relay_output,
                            record.control_secret,
                        ),
                    )
                    upsert_ledgers(db, [ledger_row(self._state_rows, state, ts)])
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
        self._writer.wrote(2 * len(meters))

    def update_meter(
        self, record: MeterRecord, state: MeterState, commands: Sequence[Command], now: datetime
    ) -> None:
        """Correct an enrolled meter in ONE transaction: its address, map, key and relay
        output (``record``), its state (settings) and the events that tell the headend
        (``commands``, as ``apply`` commits them). Raises UnknownMeterError."""
        if record.meter_id != state.meter_id:
            raise ValueError("record and state name different meters")
        self._writer.run(self._change_meter, MeterUpdate(state, commands, now), record)

    def remove_meter(self, state: MeterState, commands: Sequence[Command], now: datetime) -> None:
        """Unenrol a meter in ONE transaction: its last events (``commands``, e.g. the
        removal for the headend) are queued, then its meter, ledger, token and lockout rows
        are deleted. Its outbox rows stay until sent and purged; its event log stays."""
        self._writer.run(self._change_meter, MeterUpdate(state, commands, now), None)

    def _change_meter(self, update: MeterUpdate, record: MeterRecord | None) -> None:
        """``update_meter`` with a record, ``remove_meter`` without."""
        meter = update.state.meter_id
        batch = prepare([update], self._seq, self._settings, self._state_rows, returning=False)
        with self._acks.transaction() as db:
            write_batch(db, batch, self._seq)
            if record is not None:
                db.execute(
                    "UPDATE meters SET bus = ?, unit_id = ?, map_name = ?, meter_key = ?,"
                    " key_epoch = ?, relay_output = ?, control_secret = ? WHERE meter_id = ?",
                    (
                        record.bus,
                        record.unit_id,
                        record.map_name,
                        record.meter_key,
                        record.key_epoch,
                        record.relay_output,
                        record.control_secret,
                        meter,
                    ),
                )
            else:
                for table in _METER_TABLES:
                    db.execute(f"DELETE FROM {table} WHERE meter_id = ?", (meter,))  # noqa: S608
        if record is not None:
            self._seq.update(batch.seqs)
            self._settings.update(batch.settings_cache)
        else:
            self._seq.pop(meter, None)
            self._settings.pop(meter, None)
            self._state_rows.forget(meter)
        self._writer.wrote(4)

    def load_meters(self) -> list[StoredMeter]:
        """Every enrolled meter with its state, token window and lockout, by meter id."""
        return self._writer.run(self._load_meters)

    def _load_meters(self) -> list[StoredMeter]:
        db = self._writer.db
        windows = {
            m: TokenWindow(e, h, from_signed64(b))
            for m, e, h, b in db.execute(
                "SELECT meter_id, epoch, highest, bitmap FROM token_window"
            )
        }
        next_keys: dict[str, dict[int, bytes]] = {}
        for m, epoch, key in db.execute("SELECT meter_id, epoch, meter_key FROM meter_keys"):
            next_keys.setdefault(m, {})[epoch] = bytes(key)
        lockouts: dict[str, dict[str, JsonValue]] = {
            m: json.loads(s)
            for m, s in db.execute("SELECT meter_id, state_json FROM keypad_lockout")
        }
        out = []
        rows = db.execute(
            "SELECT m.meter_id, bus, unit_id, map_name, meter_key, key_epoch, settings_json,"
            " state_json, relay_output, control_secret FROM meters m JOIN ledgers l"
            " USING (meter_id)"
            " ORDER BY m.meter_id"
        )
        for (
            meter_id,
            bus,
            unit_id,
            map_name,
            key,
            epoch,
            settings_json,
            state_json,
            relay,
            secret,
        ) in rows:
            try:
                settings = settings_from_json(json.loads(settings_json))
                state = state_from_row(state_json, settings)
            except (SettingsError, ValueError) as exc:
                raise CorruptStoreError(
                    f"meter {meter_id}: stored state unreadable: {exc}"
                ) from exc
            self._settings[meter_id] = settings
            if meter_id not in self._seq:  # enrolled by another process since this opened
                (last,) = db.execute(
                    "SELECT COALESCE(MAX(last_seq), 0) FROM outbox_seq WHERE meter_id = ?",
                    (meter_id,),
                ).fetchone()
                self._seq[meter_id] = int(last)
            record = MeterRecord(meter_id, bus, unit_id, map_name, bytes(key), epoch, relay, secret)
            out.append(
                StoredMeter(
                    record,
                    state,
                    windows.get(meter_id),
                    lockouts.get(meter_id),
                    next_keys.get(meter_id, {}),
                )
            )
        return out

    def install_meter_keys(self, keys: Sequence[tuple[str, int, bytes]]) -> None:
        """Install keys of later epochs ((meter, epoch, key) each) ahead of key-change
        tokens, in ONE transaction. Raises UnknownMeterError for a meter not enrolled and
        StoreError for an epoch not above the meter's current one."""
        self._writer.run(self._install_meter_keys, list(keys))

    def _install_meter_keys(self, keys: Sequence[tuple[str, int, bytes]]) -> None:
        with self._writer.transaction() as db:
            for meter, epoch, key in keys:
                row = db.execute(
                    "SELECT m.key_epoch, w.epoch FROM meters m LEFT JOIN token_window w"
                    " USING (meter_id) WHERE meter_id = ?",
                    (meter,),
                ).fetchone()
                if row is None:
                    raise UnknownMeterError(f"meter {meter} is not enrolled")
                current = max(e for e in row if e is not None)
                if epoch <= current:
                    raise StoreError(
                        f"meter {meter} is at key epoch {current}: a key change moves it"
                        f" above, not to {epoch}"
                    )
                db.execute(
                    "INSERT INTO meter_keys VALUES (?, ?, ?) ON CONFLICT (meter_id, epoch)"
                    " DO UPDATE SET meter_key = excluded.meter_key",
                    (meter, epoch, key),
                )
        self._writer.wrote(len(keys))

    def token_applied(self, meter_id: str, token_id: str) -> bool:
        rows = self._reader.rows(
            "SELECT 1 FROM applied_tokens WHERE meter_id = ? AND token_id = ?", (meter_id, token_id)
        )
        return bool(rows)

    def last_seq(self, meter_id: str) -> int:
        return self._seq[meter_id]

    def events(self, meter_id: str) -> list[dict[str, JsonValue]]:
        """A meter's event log, oldest first."""
        return [
            json.loads(b)
            for (b,) in self._reader.rows(
                "SELECT body_json FROM event_log WHERE meter_id = ? ORDER BY id", (meter_id,)
            )
        ]
