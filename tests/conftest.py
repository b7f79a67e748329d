"""Shared fixtures: real Mosquitto brokers (plain and mutual TLS) on free loopback ports, and
a guard that fails any test leaving tasks, timers or threads behind."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.support.mosquitto import Mosquitto, tls_broker


def _run(broker: Mosquitto, request: pytest.FixtureRequest) -> Iterator[Mosquitto]:
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(f"\n--- mosquitto log ({broker.log_path}) ---\n{broker.log()}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the item so fixtures can show the broker log on failure."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


#: how long a thread a test started may take to end after it (a timer, a writer closing)
THREAD_GRACE_S = 2.0


@pytest_asyncio.fixture(autouse=True)
async def no_leftovers() -> AsyncIterator[None]:
    """Every task, timer and thread a test starts is ended by the time it ends (as zigpy's
    conftest checks): whatever starts one owns it and awaits it on close."""
    threads = set(threading.enumerate())
    yield
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    await asyncio.sleep(0)  # let cancellations already requested be delivered
    await loop.shutdown_default_executor()  # the loop's own threads (run_in_executor)
    tasks = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    scheduled: list[asyncio.TimerHandle] = getattr(loop, "_scheduled", [])  # no public view
    timers = [h for h in scheduled if not h.cancelled()]
    left = [t for t in threading.enumerate() if t not in threads]
    for thread in left:
        thread.join(THREAD_GRACE_S)
    alive = [t.name for t in left if t.is_alive()]
    for task in tasks:
        task.cancel()
    assert not tasks, f"tasks left running: {sorted(t.get_name() for t in tasks)}"
    assert not timers, f"timers left scheduled: {timers[:5]}"
    assert not alive, f"threads left running: {alive}"


@pytest.fixture
def mosquitto(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Mosquitto]:
    """A plain broker, anonymous clients allowed."""
    yield from _run(Mosquitto(tmp_path), request)


@pytest.fixture
def mosquitto_tls(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Mosquitto]:
    """A broker requiring client certificates, with the test ACL."""
    yield from _run(tls_broker(tmp_path), request)
