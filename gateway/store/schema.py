"""The store's schema and its migrations, by ``PRAGMA user_version``.

A migration is appended, never edited: version N's script turns a version N-1 file into a
version N file, and runs inside the transaction that sets ``user_version = N``.
"""

from __future__ import annotations

import sqlite3

#: "PEG1" in ASCII: how we recognise our own files (PRAGMA application_id)
APPLICATION_ID = 0x50454731

MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE meters (
    meter_id TEXT PRIMARY KEY,
    bus TEXT NOT NULL,
    unit_id INTEGER NOT NULL,
    map_name TEXT NOT NULL,
    meter_key BLOB NOT NULL,
    key_epoch INTEGER NOT NULL,
    settings_json TEXT NOT NULL,
    enrolled_at TEXT NOT NULL
) STRICT;
CREATE TABLE ledgers (
    meter_id TEXT PRIMARY KEY REFERENCES meters(meter_id),
    balance INTEGER NOT NULL,
    debt INTEGER NOT NULL,
    credit_state TEXT NOT NULL,
    state_json TEXT NOT NULL,
    updated_at TEXT NOT NULL
) STRICT;
CREATE TABLE token_window (
    meter_id TEXT PRIMARY KEY REFERENCES meters(meter_id),
    epoch INTEGER NOT NULL,
    highest INTEGER NOT NULL,
    bitmap INTEGER NOT NULL  -- the 64-bit window as a signed 64-bit integer
) STRICT;
CREATE TABLE applied_tokens (
    meter_id TEXT NOT NULL REFERENCES meters(meter_id),
    token_id TEXT NOT NULL,
    applied_at TEXT NOT NULL,
    PRIMARY KEY (meter_id, token_id)
) STRICT, WITHOUT ROWID;
CREATE TABLE keypad_lockout (
    meter_id TEXT PRIMARY KEY REFERENCES meters(meter_id),
    state_json TEXT NOT NULL
) STRICT;
CREATE TABLE event_log (
    id INTEGER PRIMARY KEY,
    meter_id TEXT NOT NULL,
    ts TEXT NOT NULL,
    event TEXT NOT NULL,
    body_json TEXT NOT NULL
) STRICT;
CREATE INDEX event_log_meter ON event_log(meter_id, id);
CREATE TABLE outbox_seq (
    meter_id TEXT PRIMARY KEY REFERENCES meters(meter_id),
    last_seq INTEGER NOT NULL
) STRICT;
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    meter_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    ts TEXT NOT NULL,
    body_json TEXT NOT NULL,
    acked_at TEXT,
    UNIQUE (meter_id, seq)
);
CREATE INDEX outbox_unacked ON outbox(id) WHERE acked_at IS NULL;
CREATE INDEX outbox_acked ON outbox(acked_at) WHERE acked_at IS NOT NULL;
""",
    2: """
CREATE TABLE executed_commands (
    command_id TEXT PRIMARY KEY,
    expires_at TEXT NOT NULL,
    executed_at TEXT NOT NULL
) STRICT, WITHOUT ROWID;
""",
    3: """
ALTER TABLE meters ADD COLUMN relay_output TEXT;
""",
    # No table changes: ledgers.state_json may now hold its times as integer microseconds
    # (gateway/store/state_row.py), which a gateway of schema 3 cannot read, so it must refuse.
    4: """
SELECT 1;
""",
    # Times are written in UTC from now on: SQL compares them as text, and a command's
    # expiry written with another offset was purged early (so it could be replayed).
    5: """
UPDATE executed_commands SET expires_at = strftime('%Y-%m-%dT%H:%M:%f+00:00', expires_at);
UPDATE executed_commands SET executed_at = strftime('%Y-%m-%dT%H:%M:%f+00:00', executed_at);
""",
    # Each meter's latest balance, found at once: the gateway republishes it, retained, on
    # every new MQTT session (rebirth), and the purge keeps it however old it is.
    6: """
CREATE INDEX IF NOT EXISTS outbox_balances ON outbox(meter_id, seq) WHERE kind = 'balance';
""",
    # Keys of later key epochs, installed ahead of a key-change token: the token moves
    # the meter's key (meters.meter_key, key_epoch) to one of them in its own transaction.
    7: """
CREATE TABLE IF NOT EXISTS meter_keys (
    meter_id TEXT NOT NULL REFERENCES meters(meter_id),
    epoch INTEGER NOT NULL,
    meter_key BLOB NOT NULL,
    PRIMARY KEY (meter_id, epoch)
) STRICT, WITHOUT ROWID;
""",
    # A DL/T 645 meter's remote-control secret (password and operator code, or "esam"),
    # entered at enrolment; the file is owner-only like the meter keys beside it.
    8: """
ALTER TABLE meters ADD COLUMN control_secret TEXT;
""",
}

SCHEMA_VERSION = max(MIGRATIONS)


def migrate(db: sqlite3.Connection) -> None:
    """Bring the file open on ``db`` to SCHEMA_VERSION, one transaction per version."""
    version: int = db.execute("PRAGMA user_version").fetchone()[0]
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
