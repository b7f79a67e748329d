"""Opening a store file: checked before anything is written to it, then migrated.

The SQLite header, our ``application_id`` and the schema version are read from the raw
bytes, then ``PRAGMA quick_check`` runs on a read-only connection. A foreign, corrupt or
newer file is refused unchanged.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.private_files import create_private_file
from gateway.store.errors import (
    READ_ONLY,
    CorruptStoreError,
    ForeignFileError,
    SchemaTooNewError,
    StorageUnavailableError,
    StoreError,
    storage_problem,
)
from gateway.store.schema import APPLICATION_ID, SCHEMA_VERSION, migrate

SQLITE_MAGIC = b"SQLite format 3\x00"


def check_file(path: Path) -> int | None:
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


def open_file(path: Path) -> sqlite3.Connection:
    """The write connection to the checked, migrated store at ``path`` (created if new):
    WAL, ``synchronous=FULL`` (a commit survives a power cut), foreign keys on."""
    if storage_problem(path) == READ_ONLY:
        # SQLite would open it read-only and stay so after the file system recovers.
        raise StorageUnavailableError(f"cannot open {path} for writing: {READ_ONLY}")
    version = check_file(path)
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
        migrate(db)
    except sqlite3.DatabaseError as exc:
        db.close()
        raise open_error(path, exc) from exc
    return db


def open_error(path: Path, exc: sqlite3.DatabaseError) -> StoreError:
    """The typed error for a store that failed to open: its storage (may clear by
    itself) or damage."""
    problem = storage_problem(path)
    if problem is not None:
        return StorageUnavailableError(f"cannot open {path}: {problem} ({exc})")
    return CorruptStoreError(f"{path}: {exc}")
