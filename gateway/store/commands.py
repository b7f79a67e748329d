"""Signed remote commands executed, kept until they expire so that a captured one cannot
be replayed (here, or on a replacement gateway after an export)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime

from gateway.store.base import StoreBase
from gateway.store.errors import storage_error
from gateway.store.records import iso


class CommandsRoom(StoreBase):
    """``Store``'s record of executed signed commands."""

    def claim_command(self, command_id: str, expires_at: datetime, now: datetime) -> bool:
        """Record a signed command as executed; False if it already was (a replay).
        Expired entries are dropped on the way: a command past its expiry is refused
        by its signature check anyway."""
        return self._writer.run(self._claim_command, command_id, expires_at, now)

    async def claim_command_async(
        self, command_id: str, expires_at: datetime, now: datetime
    ) -> bool:
        """``claim_command`` awaited from an event loop, which runs on meanwhile."""
        return await self._writer.run_async(self._claim_command, command_id, expires_at, now)

    def _claim_command(self, command_id: str, expires_at: datetime, now: datetime) -> bool:
        try:
            with self._writer.transaction() as db:
                db.execute("DELETE FROM executed_commands WHERE expires_at < ?", (iso(now),))
                cursor = db.execute(
                    "INSERT OR IGNORE INTO executed_commands VALUES (?, ?, ?)",
                    (command_id, iso(expires_at), iso(now)),
                )
        except sqlite3.Error as exc:
            raise storage_error(exc, "recording the command failed") from exc
        return cursor.rowcount == 1

    async def release_command_async(self, command_id: str) -> None:
        """Forget a claimed command that could not be carried out (its step did not
        commit), so that the headend may send it again."""
        await self._writer.run_async(self._release_command, command_id)

    def _release_command(self, command_id: str) -> None:
        try:
            with self._writer.transaction() as db:
                db.execute("DELETE FROM executed_commands WHERE command_id = ?", (command_id,))
        except sqlite3.Error as exc:
            raise storage_error(exc, "releasing the command failed") from exc

    def executed_commands(self, now: datetime) -> list[tuple[str, datetime, datetime]]:
        """Signed commands executed and not yet expired: (id, expires, executed), for an
        export to carry to a replacement gateway (so a captured one fails there too)."""
        return [
            (i, datetime.fromisoformat(e), datetime.fromisoformat(x))
            for i, e, x in self._reader.rows(
                "SELECT command_id, expires_at, executed_at FROM executed_commands"
                " WHERE expires_at >= ? ORDER BY executed_at",
                (iso(now),),
            )
        ]

    def restore_executed_commands(self, rows: Sequence[tuple[str, datetime, datetime]]) -> int:
        """Record commands another gateway executed (from an export); how many were new."""
        return self._writer.run(self._restore_executed, list(rows))

    def _restore_executed(self, rows: list[tuple[str, datetime, datetime]]) -> int:
        try:
            with self._writer.transaction() as db:
                before = db.total_changes
                db.executemany(
                    "INSERT OR IGNORE INTO executed_commands VALUES (?, ?, ?)",
                    [(i, iso(e), iso(x)) for i, e, x in rows],
                )
                return db.total_changes - before
        except sqlite3.Error as exc:
            raise storage_error(exc, "recording executed commands failed") from exc
