"""``Store``: the gateway's one SQLite file, put together from its rooms."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import TracebackType
from typing import Self

from gateway.store.acks import Acks
from gateway.store.commands import CommandsRoom
from gateway.store.connections import Reader, Writer
from gateway.store.cycle import CycleRoom
from gateway.store.meters import MetersRoom
from gateway.store.opening import open_error, open_file
from gateway.store.outbox import OutboxRoom
from gateway.store.state_row import StateRows


class Store(MetersRoom, CycleRoom, OutboxRoom, CommandsRoom):
    """The gateway's one SQLite file, in WAL mode with ``synchronous=FULL``. Thread-safe:
    writes are serialised on the store's writer thread (the only user of the write
    connection), reads share a lock on a connection of their own."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self.path = path
        self._seq = dict(connection.execute("SELECT meter_id, last_seq FROM outbox_seq").fetchall())
        self._settings = {}
        self._state_rows = StateRows()
        self._writer = Writer(connection, path)
        self._reader = Reader(path)
        self._acks = Acks(self._writer)

    @classmethod
    def open(cls, path: str | Path) -> Store:
        """Open (or create) the store at ``path`` and migrate it to the current schema;
        a foreign, corrupt or newer file is refused unchanged (see ``opening.py``)."""
        path = Path(path)
        db = open_file(path)
        try:
            return cls(db, path)
        except sqlite3.DatabaseError as exc:
            db.close()
            raise open_error(path, exc) from exc

    def close(self) -> None:
        """Finish the queued writes, write the waiting acknowledgements, then close."""
        self._acks.close()
        self._writer.close()
        self._reader.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def schema_version(self) -> int:
        version: int = self._reader.rows("PRAGMA user_version")[0][0]
        return version
