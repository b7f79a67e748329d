"""A bus poller keeps at most ``concurrency`` reads in flight, reads every due meter, retries then backs off a failing one, survives a crashing callback, and leaves no task behind when cancelled."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.meter_io import MeterIO, MeterSnapshot
from gateway.modbus_port import IOFailure, MeterIOError
from gateway.poller import BusPoller, PolledMeter
from protocol.modbus import Request
from protocol.regmap import load_map

pytestmark = pytest.mark.asyncio

PE1 = MeterIO(load_map("pe1"))
#: a good PE-1 block (input registers 1..22): energy 1234 Wh, relay closed
GOOD = (0, 0, 0, 1234, 0, 0, 0, 0, 2300, 0, 0, 0, 500, 0, 0, 1, 0, 0, 0, 0, 0, 0)


class FakePort:
    """Answers from memory; counts requests in flight; units in ``dead`` time out."""

    name = "fake"

    def __init__(self, dead: frozenset[int] = frozenset()) -> None:
        self.dead = dead
        self.in_flight = 0
        self.most_in_flight = 0
        self.requests: list[int] = []

    async def request(self, request: Request) -> tuple[int, ...]:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            self.requests.append(request.unit)
            if request.unit in self.dead:
                raise MeterIOError(request.unit, IOFailure.TIMEOUT, "no reply")
            return GOOD
        finally:
            self.in_flight -= 1

    async def close(self) -> None:
        return None


def meters(n: int, interval: float = 0.0) -> list[PolledMeter]:
    return [PolledMeter(f"M{u}", u, PE1, interval) for u in range(1, n + 1)]


async def run_until(poller: BusPoller, done: asyncio.Event) -> None:
    task = asyncio.create_task(poller.run())
    try:
        await asyncio.wait_for(done.wait(), 30)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_every_meter_is_read_with_at_most_concurrency_in_flight() -> None:
    port = FakePort()
    seen: dict[str, int] = {}
    done = asyncio.Event()

    async def on_reading(m: PolledMeter, snap: MeterSnapshot) -> None:
        assert snap.energy_import_wh == 1234
        assert snap.relay_closed is True
        seen[m.meter_id] = seen.get(m.meter_id, 0) + 1
        if len(seen) == 20 and min(seen.values()) >= 3:
            done.set()

    async def on_failure(m: PolledMeter, e: MeterIOError) -> None:
        raise AssertionError(e)

    poller = BusPoller("bus", port, on_reading, on_failure, concurrency=4)
    for m in meters(20):
        poller.add(m)
    before = asyncio.all_tasks()
    await run_until(poller, done)
    assert port.most_in_flight == 4
    assert asyncio.all_tasks() == before  # the workers went with the poller


async def test_a_dead_meter_is_retried_then_backed_off_and_never_reported_as_read() -> None:
    port = FakePort(dead=frozenset({2}))
    failures: list[tuple[str, int]] = []
    reads: dict[str, int] = {}
    done = asyncio.Event()

    async def on_reading(m: PolledMeter, snap: MeterSnapshot) -> None:
        reads[m.meter_id] = reads.get(m.meter_id, 0) + 1
        if failures and reads.get("M1", 0) >= 5:
            done.set()

    async def on_failure(m: PolledMeter, e: MeterIOError) -> None:
        failures.append((m.meter_id, m.consecutive_failures))

    poller = BusPoller("bus", port, on_reading, on_failure, concurrency=2, retries=2)
    one, dead = meters(2, interval=0.001)
    poller.add(one)
    poller.add(dead)
    await run_until(poller, done)
    assert "M2" not in reads
    assert failures[0] == ("M2", 1)
    assert port.requests.count(2) == 3 * len(failures)  # 1 try + 2 retries per poll
    assert dead.consecutive_failures == dead.failures == len(failures)
    assert one.consecutive_failures == 0


async def test_a_crashing_callback_is_logged_and_polling_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = FakePort()
    reads = 0
    done = asyncio.Event()

    async def on_reading(m: PolledMeter, snap: MeterSnapshot) -> None:
        nonlocal reads
        reads += 1
        if reads == 1:
            raise RuntimeError("boom")
        if reads >= 10:
            done.set()

    async def on_failure(m: PolledMeter, e: MeterIOError) -> None:
        raise AssertionError(e)

    poller = BusPoller("bus", port, on_reading, on_failure, concurrency=1)
    for m in meters(2):
        poller.add(m)
    with caplog.at_level(logging.ERROR, logger="gateway.poller"):
        await run_until(poller, done)
    assert any("crashed" in r.getMessage() for r in caplog.records)


async def test_poll_now_brings_a_meter_forward_and_the_poller_can_run_again() -> None:
    port = FakePort()
    reads: list[str] = []
    first, second = asyncio.Event(), asyncio.Event()

    async def on_reading(m: PolledMeter, snap: MeterSnapshot) -> None:
        reads.append(m.meter_id)
        (second if first.is_set() else first).set()

    async def on_failure(m: PolledMeter, e: MeterIOError) -> None:
        raise AssertionError(e)

    poller = BusPoller("bus", port, on_reading, on_failure, concurrency=2)
    (slow,) = meters(1, interval=3600.0)
    poller.add(slow)
    await run_until(poller, first)  # read once; next due in an hour
    task = asyncio.create_task(poller.run())
    await asyncio.sleep(0)
    poller.poll_now("M1")
    await asyncio.wait_for(second.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert reads == ["M1", "M1"]
