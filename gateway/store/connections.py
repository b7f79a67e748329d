"""The store's three connections, each with its own thread or lock.

Every write runs on one writer thread that owns the write connection, in the order
submitted, so the event loop can await a durable commit instead of blocking on its fsync.
Reads go through a second connection: WAL readers see only committed transactions, which
is what the outbox drain must see. A third connection copies the WAL into the database
file on its own thread, so no commit pays for a checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from gateway.store.errors import StoreError

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: The checkpointer runs once about this many pages were written to the WAL since the
#: last run (SQLite's own default for its automatic checkpoint).
CHECKPOINT_PAGES = 1000
#: If the checkpointer falls behind, the writer checkpoints itself past this many pages.
WAL_AUTOCHECKPOINT_PAGES = 16384


class Writer:
    """The write connection and the one thread that uses it."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self.db = db
        self.path = path
        # The checkpointer keeps the WAL short; this is only the fallback if it lags.
        db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self._checkpointer = Checkpointer(path)

    def submit(self, fn: Callable[..., _T], *args: object) -> Future[_T]:
        """Queue ``fn(*args)`` behind every write queued before it."""
        try:
            return self._pool.submit(fn, *args)
        except RuntimeError as exc:
            raise StoreError(f"store {self.path} is closed") from exc

    def run(self, fn: Callable[..., _T], *args: object) -> _T:
        """``submit`` and wait for the result."""
        return self.submit(fn, *args).result()

    async def run_async(self, fn: Callable[..., _T], *args: object) -> _T:
        """``submit`` awaited from an event loop, which runs on meanwhile. Cancelling the
        wait does not cancel work already started: a transaction is never cut in half."""
        return await asyncio.wrap_future(self.submit(fn, *args))

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, on the writer thread; anything failing (the COMMIT
        too: a full disk or an I/O error shows there) leaves no transaction open, so the
        next one can start."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise

    def wrote(self, pages: int) -> None:
        """About ``pages`` pages were committed (called on the writer thread)."""
        self._checkpointer.wrote(pages)

    def close(self) -> None:
        """Finish the queued work, then close."""
        self._pool.shutdown(wait=True)
        self._checkpointer.close()
        self.db.close()


class Reader:
    """The read connection, shared under a lock. Never waits for the writer."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA query_only=ON")
        self._lock = threading.Lock()

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """Several reads in one read transaction: they all see the same commits."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield self._db
            finally:
                self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()


class Checkpointer:
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
