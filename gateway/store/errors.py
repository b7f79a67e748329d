"""What the store refuses, and what tells a store that may recover by itself (a full or
read-only file system) from one that is broken or was asked something wrong."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from gateway.errors import GatewayError


class StoreError(GatewayError):
    """The store refused an operation; nothing was changed."""


class ForeignFileError(StoreError):
    """The file is not a prepaid-edge store (not SQLite, or another application's)."""


class CorruptStoreError(StoreError):
    """The file is ours but SQLite reports damage."""


class SchemaTooNewError(StoreError):
    """The file was written by a newer prepaid-edge; upgrade the gateway to open it."""


class UnknownMeterError(StoreError):
    """The meter is not enrolled in this store."""


class DuplicateMeterError(StoreError):
    """The meter is already enrolled in this store."""


class TokenAlreadyAppliedError(StoreError):
    """A token's credit was already committed: applying it again would double it."""


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


def storage_error(exc: sqlite3.Error, what: str) -> StoreError:
    """The typed error for a failed write: unavailable storage (may clear by itself) or
    a refusal of what was asked."""
    if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError) and not isinstance(
        exc, sqlite3.IntegrityError
    ):
        return StorageUnavailableError(f"{what}: {exc}")
    return StoreError(f"{what}: {exc}")
