"""sleep_until: never returns before its deadline, and leaves no timer descriptor open."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time

import pytest

from gateway.fine_sleep import sleep_until

pytestmark = pytest.mark.asyncio


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("ahead", [0.0002, 0.0008, 0.0015, 0.0017, 0.003])
async def test_returns_at_the_deadline_never_before(ahead: float) -> None:
    for _ in range(20):
        deadline = time.monotonic() + ahead
        await sleep_until(deadline)
        assert time.monotonic() >= deadline


async def test_a_past_deadline_returns_at_once() -> None:
    before = _open_fds()
    await sleep_until(time.monotonic() - 1.0)
    assert _open_fds() == before


async def test_cancelled_and_finished_waits_close_their_timer() -> None:
    before = _open_fds()
    await sleep_until(time.monotonic() + 0.001)
    task = asyncio.create_task(sleep_until(time.monotonic() + 60))
    await asyncio.sleep(0)  # let it arm its timer
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _open_fds() == before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timerfd is Linux's")
async def test_on_linux_the_wait_is_a_timerfd() -> None:
    """The wait is the timerfd, not the millisecond-rounded asyncio.sleep fallback."""
    before = _timerfds()
    task = asyncio.create_task(sleep_until(time.monotonic() + 60))
    await asyncio.sleep(0)  # let it arm its timer
    during = _timerfds()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (before, during, _timerfds()) == (0, 1, 0)


def _timerfds() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # listdir's own, closed by now
            count += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[timerfd]"
    return count
