"""The outbox as the drain and the resend path see it: pending rows in commit order,
acknowledgements (batched in ``acks.py``), a meter's rows for resend, and the purge of rows
acknowledged long enough ago. Reads never wait for the writer; acknowledgements not yet
written count as written."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime

from gateway.store.base import StoreBase
from gateway.store.records import INT64_MAX, OutboxRow, RawOutboxRow, iso


class OutboxRoom(StoreBase):
    """``Store``'s outbox."""

    def mark_acked(self, ids: Iterable[int], at: datetime) -> None:
        """Record broker acknowledgements without waiting: this store's reads see them at
        once, the file in the next transaction (see ``acks.py``), so a power cut or crash
        can only lose acknowledgements, which means a message is sent again, never lost."""
        self._acks.record(ids, iso(at))

    def outbox_pending_raw(self, limit: int = 256, after_id: int = 0) -> list[RawOutboxRow]:
        """Unacknowledged rows in commit order as stored (time and body as text), for the
        drain, which splices the stored JSON into the envelope instead of decoding it."""
        acking = self._acks.waiting()
        out: list[RawOutboxRow] = []
        while True:
            want = limit - len(out)
            rows = [
                RawOutboxRow(*r)
                for r in self._reader.rows(
                    "SELECT id, meter_id, seq, kind, ts, body_json FROM outbox"
                    " WHERE acked_at IS NULL AND id > ? ORDER BY id LIMIT ?",
                    (after_id, want),
                )
            ]
            out += [r for r in rows if r.id not in acking] if acking else rows
            if len(rows) < want or len(out) >= limit:
                return out
            after_id = rows[-1].id

    def outbox_pending(self, limit: int = 100, after_id: int = 0) -> list[OutboxRow]:
        """:meth:`outbox_pending_raw` decoded."""
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
        acking = self._acks.waiting()
        rows = [
            OutboxRow(
                i,
                m,
                s,
                k,
                datetime.fromisoformat(t),
                json.loads(b),
                datetime.fromisoformat(a) if a else None,
            )
            for i, m, s, k, t, b, a in self._reader.rows(
                "SELECT id, meter_id, seq, kind, ts, body_json, acked_at FROM outbox"
                " WHERE meter_id = ? AND seq >= ? ORDER BY seq LIMIT ?",
                (meter_id, min(seq, INT64_MAX), limit),
            )
        ]
        if not acking:
            return rows
        return [
            replace(r, acked_at=datetime.fromisoformat(acking[r.id]))
            if r.acked_at is None and r.id in acking
            else r
            for r in rows
        ]

    def outbox_since_raw(self, meter_id: str, seq: int, limit: int = -1) -> list[RawOutboxRow]:
        """:meth:`outbox_since` as stored (time and body as text), for resend: a resent
        message is spliced from the stored JSON as the drain's was, so it is the same bytes."""
        return [
            RawOutboxRow(*r)
            for r in self._reader.rows(
                "SELECT id, meter_id, seq, kind, ts, body_json FROM outbox"
                " WHERE meter_id = ? AND seq >= ? ORDER BY seq LIMIT ?",
                (meter_id, min(seq, INT64_MAX), limit),
            )
        ]

    def latest_balance(self, meter_id: str) -> RawOutboxRow | None:
        """The meter's latest ``balance`` row if the broker acknowledged it (None while it
        is still the drain's to send, or when the meter has none): what a new session
        republishes, retained, so the broker's view is current (``gateway/rebirth.py``)."""
        found = self._reader.rows(
            "SELECT id, meter_id, seq, kind, ts, body_json, acked_at FROM outbox"
            " WHERE meter_id = ? AND kind = 'balance' ORDER BY seq DESC LIMIT 1",
            (meter_id,),
        )
        if not found:
            return None
        *row, acked_at = found[0]
        latest = RawOutboxRow(*row)
        if acked_at is None and not self._acks.is_waiting(latest.id):
            return None
        return latest

    def outbox_seqs_since(self, meter_id: str, seq: int, limit: int) -> list[int]:
        """The seqs :meth:`outbox_since` would return (at most ``limit``), unread."""
        return [
            s
            for (s,) in self._reader.rows(
                "SELECT seq FROM outbox WHERE meter_id = ? AND seq >= ? ORDER BY seq LIMIT ?",
                (meter_id, min(seq, INT64_MAX), limit),
            )
        ]

    def outbox_depth(self) -> int:
        """Unacknowledged rows."""
        unacked = "SELECT count(*) FROM outbox WHERE acked_at IS NULL"
        acking = self._acks.waiting()
        if not acking:
            depth: int = self._reader.rows(unacked)[0][0]
            return depth
        # One read transaction: the acks recorded before it either are in its snapshot
        # (no longer counted) or are subtracted here, never both.
        ids = sorted(acking)
        with self._reader.snapshot() as db:
            depth = db.execute(unacked).fetchone()[0]
            for start in range(0, len(ids), 500):
                part = ids[start : start + 500]
                marks = ",".join("?" * len(part))
                depth -= db.execute(f"{unacked} AND id IN ({marks})", part).fetchone()[0]
        return depth

    def purge_acked(self, older_than: datetime) -> int:
        """Delete rows acknowledged before ``older_than``, but each meter's latest balance
        (rebirth republishes it); the seq counters are kept."""
        return self._writer.run(self._purge_acked, older_than)

    async def purge_acked_async(self, older_than: datetime) -> int:
        """``purge_acked`` awaited from an event loop, which runs on meanwhile."""
        return await self._writer.run_async(self._purge_acked, older_than)

    def _purge_acked(self, older_than: datetime) -> int:
        with self._acks.transaction() as db:
            cursor = db.execute(
                "DELETE FROM outbox WHERE acked_at IS NOT NULL AND acked_at < ?"
                " AND NOT (kind = 'balance' AND seq = (SELECT max(b.seq) FROM outbox b"
                " WHERE b.meter_id = outbox.meter_id AND b.kind = 'balance'))",
                (iso(older_than),),
            )
        self._writer.wrote(cursor.rowcount // 8 + 2)
        return cursor.rowcount
