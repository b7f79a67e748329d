"""One gateway per store: an exclusive ``flock`` on ``<store>.lock``, held for the
holder's whole life, with its PID and what it is (``meter-gateway``, or the provisioning
command holding it) written inside.

A second gateway on the same store would poll the same meters, write the same ledgers
and knock the first off the broker; ``commission`` (a second master on an RS-485 line)
and ``import`` (ledgers the gateway also writes) must not run beside one either. The
kernel drops a ``flock`` with the last descriptor of its file, so a process killed with
SIGKILL leaves no stale lock: a PID left in the file by a dead process is never taken for
a live holder, because holding is tested by trying to take the lock, not by the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from gateway.errors import GatewayError
from gateway.private_files import PRIVATE_FILE

#: what the gateway writes into the lock file beside its PID
GATEWAY = "meter-gateway"
#: tries (50 ms apart) before giving up on a lock held only for a moment (by :func:`holder`)
_TRIES = 4


def lock_path(store: Path) -> Path:
    return store.with_name(store.name + ".lock")


@dataclass(frozen=True, slots=True)
class Holder:
    """The process holding a store's lock, as it wrote itself into the lock file."""

    pid: int | None
    role: str

    @property
    def is_gateway(self) -> bool:
        return self.role == GATEWAY and self.pid is not None

    def __str__(self) -> str:
        return f"{self.role} (PID {self.pid})" if self.pid is not None else self.role


class StoreLockError(GatewayError):
    """The lock file cannot be opened or created (``reason`` is the OS's)."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"cannot open the lock file {path}: {reason}")


class StoreLockedError(GatewayError):
    """Another process holds the store's lock."""

    def __init__(self, path: Path, holder: Holder) -> None:
        self.path = path
        self.holder = holder
        super().__init__(f"{holder} holds {path}")


def _read_holder(fd: int) -> Holder:
    try:
        text = os.pread(fd, 256, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    pid, _, role = text.partition(" ")
    if not pid.isdigit():
        return Holder(None, "another process")
    return Holder(int(pid), role.strip() or "a process")


class StoreLock:
    """The exclusive lock on a store, held until :meth:`release` (or the process ends)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, store: Path, role: str) -> StoreLock:
        """Take the store's lock and write this PID and ``role`` into the lock file;
        :class:`StoreLockedError` (naming the holder) if another process has it."""
        path = lock_path(store)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
        except OSError as exc:
            raise StoreLockError(path, exc.strerror or str(exc)) from None
        try:
            for attempt in range(_TRIES):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if attempt == _TRIES - 1:
                        raise StoreLockedError(path, _read_holder(fd)) from None
                    time.sleep(0.05)
            try:
                if os.fstat(fd).st_size == 0:
                    os.fchmod(fd, PRIVATE_FILE)  # new: owner-only whatever the umask
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()} {role}\n".encode(), 0)
            except OSError as exc:  # a full disk: the lock cannot say who holds it
                raise StoreLockError(path, exc.strerror or str(exc)) from None
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    def release(self) -> None:
        """Give the lock up (the file stays: removing it could split the next holders)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def holder(store: Path) -> Holder | None:
    """The process holding the store's lock, or None when none does. Creates nothing;
    tests the lock for a moment with a shared lock (see ``_TRIES``)."""
    try:
        fd = os.open(lock_path(store), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreLockError(lock_path(store), exc.strerror or str(exc)) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
