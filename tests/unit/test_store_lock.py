"""The store's lock: one holder at a time, a second one refused naming the holder's PID and role, holder() reports without taking it, the lock file is owner-only whatever the umask, and a released lock is free again."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gateway.store_lock import (
    GATEWAY,
    Holder,
    StoreLock,
    StoreLockedError,
    StoreLockError,
    holder,
    lock_path,
)


def test_one_holder_at_a_time(tmp_path: Path) -> None:
    store = tmp_path / "gw.db"
    assert holder(store) is None  # no lock file yet, and none is created
    assert not lock_path(store).exists()
    old = os.umask(0)
    try:
        lock = StoreLock.acquire(store, GATEWAY)
    finally:
        os.umask(old)
    with lock:
        assert stat.S_IMODE(lock_path(store).stat().st_mode) == 0o600
        me = Holder(os.getpid(), GATEWAY)
        assert holder(store) == me
        assert me.is_gateway
        with pytest.raises(StoreLockedError) as refused:
            StoreLock.acquire(store, "meter-provision commission")
        assert refused.value.holder == me
        assert f"meter-gateway (PID {os.getpid()})" in str(refused.value)
    assert holder(store) is None
    with StoreLock.acquire(store, "meter-provision import"):
        found = holder(store)
        assert found == Holder(os.getpid(), "meter-provision import")
        assert not found.is_gateway


def test_a_folder_it_cannot_write_is_a_lock_error(tmp_path: Path) -> None:
    with pytest.raises(StoreLockError, match="No such file or directory"):
        StoreLock.acquire(tmp_path / "missing" / "gw.db", GATEWAY)
