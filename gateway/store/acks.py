"""Broker acknowledgements: the one place they are batched before they reach the file.

The outbox drain hands each PUBACK's row over as it comes (``Store.mark_acked``). This
store's reads see it at once; the file gets it in the next transaction the writer commits
anyway, or in one of its own once ACK_FLUSH_S passed without one or ACK_FLUSH_ROWS wait,
and at close. A crash or power cut can therefore only lose acknowledgements, which means a
message is sent again, never lost. The batching lives here rather than in the drain
because only the store knows when a commit is coming that can carry them for free.

An ack-only transaction is as durable as any other (``synchronous=FULL``): writing it with
``synchronous=NORMAL`` saved 0.3 to 0.8 ms a flush of 64 to 1,024 acks on the 2-core
reference box (bench/bench_store_commit.py, "acks alone"), about 1.5% of the writer
thread's time at one flush of 1,024 every 50 ms (a 20,000 messages/s drain), and none of
the event loop's: not worth switching the connection's mode back and forth.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager

from gateway.store.connections import Writer
from gateway.store.errors import StoreError

log = logging.getLogger(__name__)

#: Without a commit to ride in within this delay, waiting acknowledgements are written in
#: a transaction of their own...
ACK_FLUSH_S = 0.25
#: ... or as soon as this many wait.
ACK_FLUSH_ROWS = 1024
#: While acknowledgements cannot be written (a full disk), say so at most this often.
ACK_FAILURE_LOG_S = 60.0
#: Row ids per ``IN (...)`` list, under SQLite's 999 parameters.
_IDS_PER_STATEMENT = 500


class Acks:
    """Acknowledgements recorded and not yet in the file: outbox id -> ``acked_at``."""

    def __init__(self, writer: Writer) -> None:
        self._writer = writer
        self._waiting: dict[int, str] = {}
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        #: a flush is queued on the writer and has not started
        self._queued = False
        self._closed = False
        self._failure_logged_at = float("-inf")

    def record(self, ids: Iterable[int], stamp: str) -> None:
        """Acknowledged at ``stamp`` (as the store writes times). Never waits."""
        with self._lock:
            if self._closed:
                raise StoreError(f"store {self._writer.path} is closed")
            for i in ids:
                self._waiting.setdefault(i, stamp)
            if not self._waiting or self._queued:
                return
            if len(self._waiting) < ACK_FLUSH_ROWS:
                if self._timer is None:
                    self._timer = threading.Timer(ACK_FLUSH_S, self._due)
                    self._timer.name = "store-acks"
                    self._timer.daemon = True
                    self._timer.start()
                return
            self._queued = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self._queue_flush()

    def is_waiting(self, row_id: int) -> bool:
        """Whether ``row_id``'s acknowledgement is recorded and not yet written (no copy)."""
        with self._lock:
            return row_id in self._waiting

    def waiting(self) -> dict[int, str]:
        """A copy of the acknowledgements not yet written, for reads to apply."""
        with self._lock:
            return dict(self._waiting) if self._waiting else {}

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A writer transaction that writes the waiting acknowledgements too; they stop
        waiting once it committed (a rollback leaves them waiting). Writer thread only."""
        with self._lock:
            pairs = list(self._waiting.items())
        with self._writer.transaction() as db:
            by_stamp: dict[str, list[int]] = {}
            for i, stamp in pairs:
                by_stamp.setdefault(stamp, []).append(i)
            for stamp, ids in by_stamp.items():
                for start in range(0, len(ids), _IDS_PER_STATEMENT):
                    part = ids[start : start + _IDS_PER_STATEMENT]
                    marks = ",".join("?" * len(part))
                    db.execute(
                        f"UPDATE outbox SET acked_at = ? WHERE acked_at IS NULL AND id IN ({marks})",  # noqa: S608
                        [stamp, *part],
                    )
            yield db
        if pairs:
            with self._lock:
                for i, _stamp in pairs:
                    self._waiting.pop(i, None)
            self._writer.wrote(len(pairs) // 8)

    def flush(self) -> None:
        """Write the waiting acknowledgements in a transaction of their own, unless a
        commit took them meanwhile. Writer thread only."""
        with self._lock:
            self._queued = False
            if not self._waiting:
                return
        with self.transaction():
            pass
        self._writer.wrote(2)

    def close(self) -> None:
        """Refuse new acknowledgements, stop the timer and queue the last flush (the
        writer runs it before it closes)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            timer.join()
        self._queue_flush()

    def _due(self) -> None:
        """ACK_FLUSH_S passed since the first acknowledgement waiting (timer thread)."""
        with self._lock:
            if self._timer is threading.current_thread():
                self._timer = None
            if not self._waiting or self._queued or self._closed:
                return
            self._queued = True
        self._queue_flush()

    def _queue_flush(self) -> None:
        with contextlib.suppress(StoreError):  # closed meanwhile: close wrote them
            self._writer.submit(self.flush).add_done_callback(self._log_failure)

    def _log_failure(self, future: Future[None]) -> None:
        if future.cancelled() or (exc := future.exception()) is None:
            return
        now = time.monotonic()
        if now - self._failure_logged_at >= ACK_FAILURE_LOG_S:
            self._failure_logged_at = now
            log.error("recording broker acknowledgements failed (they will be resent): %s", exc)
