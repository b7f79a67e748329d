"""One poller per bus: reads each meter when it is due and reports what it saw.

RTU buses are polled strictly one request at a time (the port serialises the wire);
TCP endpoints with up to ``concurrency`` meters in flight. A meter that fails is
retried a bounded number of times within the poll, then backed off, so one dead meter
never stalls the others. A snapshot is reported only from a wholly successful read:
a value is never attributed to the wrong meter, and nothing is charged from a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gateway.bus_faults import BusFaults
from gateway.meter_driver import MeterDriver
from gateway.meter_io import MeterSnapshot
from gateway.modbus_port import BusUnreachableError, MeterIOError, ModbusPort
from gateway.poll_schedule import backoff_for

log = logging.getLogger(__name__)


@dataclass
class PolledMeter:
    """A meter on this bus and its polling state."""

    meter_id: str
    unit: int
    io: MeterDriver
    interval: float
    next_due: float = 0.0
    consecutive_failures: int = 0
    last_ok: float | None = None
    polls: int = 0
    failures: int = 0


OnReading = Callable[[PolledMeter, MeterSnapshot], Awaitable[None]]
OnFailure = Callable[[PolledMeter, MeterIOError], Awaitable[None]]


@dataclass
class BusPoller:
    name: str
    port: ModbusPort
    on_reading: OnReading
    on_failure: OnFailure
    concurrency: int = 1
    retries: int = 1
    backoff_cap: float = 300.0
    monotonic: Callable[[], float] = time.monotonic
    meters: dict[str, PolledMeter] = field(default_factory=dict)
    _heap: list[tuple[float, int, str]] = field(default_factory=list)
    _counter: int = 0
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _busy: set[str] = field(default_factory=set)
    #: workers with nothing due, each waiting for the dispatcher to hand it a meter
    _idle: list[asyncio.Future[PolledMeter]] = field(default_factory=list)
    #: whether the bus itself can be opened or connected, and what was said about it
    faults: BusFaults = field(init=False)

    def __post_init__(self) -> None:
        self.faults = BusFaults(self.name, self.monotonic)

    def add(self, meter: PolledMeter) -> None:
        self.meters[meter.meter_id] = meter
        self._schedule(meter, meter.next_due or self.monotonic())

    def _schedule(self, meter: PolledMeter, due: float) -> None:
        meter.next_due = due
        self._counter += 1
        heapq.heappush(self._heap, (due, self._counter, meter.meter_id))
        if self._idle:  # busy workers look at the heap themselves when they finish
            self._wake.set()

    def remove(self, meter_id: str) -> None:
        """Stop polling a meter (its heap entries go stale and are dropped)."""
        self.meters.pop(meter_id, None)

    def poll_now(self, meter_id: str) -> None:
        """Re-read a meter as soon as the bus is free (after a command, a top-up, ...)."""
        meter = self.meters.get(meter_id)
        if meter is not None:
            self._schedule(meter, self.monotonic())

    def set_interval(self, meter_id: str, seconds: float) -> None:
        """Change a healthy meter's interval (from the forecast); takes effect at once if
        the new interval brings its next poll forward."""
        meter = self.meters.get(meter_id)
        if meter is None:
            return
        meter.interval = seconds
        if meter.consecutive_failures == 0 and meter.last_ok is not None:
            due = meter.last_ok + seconds
            if due < meter.next_due:
                self._schedule(meter, due)

    async def poll_once(self, meter: PolledMeter) -> bool:
        """Read one meter with bounded retries; report the reading or the failure."""
        meter.polls += 1
        error: MeterIOError | None = None
        for _attempt in range(self.retries + 1):
            try:
                snapshot = await meter.io.read(self.port, meter.unit)
            except BusUnreachableError as exc:
                self.faults.unreachable(exc.reason)
                error = exc
                continue
            except MeterIOError as exc:
                self.faults.reachable()  # the bus answered; this meter did not
                error = exc
                continue
            self.faults.reachable()
            meter.consecutive_failures = 0
            meter.last_ok = self.monotonic()
            await self.on_reading(meter, snapshot)
            return True
        assert error is not None
        meter.failures += 1
        meter.consecutive_failures += 1
        await self.on_failure(meter, error)
        return False

    def _next_due_for(self, meter: PolledMeter, ok: bool) -> float:
        now = self.monotonic()
        if ok:
            return now + meter.interval
        return now + backoff_for(
            meter.consecutive_failures, interval=meter.interval, cap=self.backoff_cap
        )

    def _take_due(self) -> PolledMeter | None:
        """The most overdue meter if it is due now (marked busy), dropping stale entries."""
        heap = self._heap
        while heap:
            due, _, meter_id = heap[0]
            meter = self.meters.get(meter_id)
            if meter is None or due != meter.next_due or meter_id in self._busy:
                heapq.heappop(heap)  # stale entry
                continue
            if due > self.monotonic():
                return None
            heapq.heappop(heap)
            self._busy.add(meter_id)
            return meter
        return None

    async def _worker(self) -> None:
        """One of ``concurrency`` polls in flight: takes the next due meter itself, and
        waits for the dispatcher only when nothing is due."""
        loop = asyncio.get_running_loop()
        while True:
            meter = self._take_due()
            if meter is None:
                waiter: asyncio.Future[PolledMeter] = loop.create_future()
                self._idle.append(waiter)
                self._wake.set()
                meter = await waiter
            ok = False
            try:
                ok = await self.poll_once(meter)
            except Exception:
                log.exception("poll of %s on %s crashed", meter.meter_id, self.name)
            finally:
                self._busy.discard(meter.meter_id)
            self._schedule(meter, self._next_due_for(meter, ok))

    async def run(self) -> None:
        """Poll forever (until cancelled): ``concurrency`` workers, and this dispatcher
        handing due meters to idle ones (sleeping until the next one is due)."""
        self._idle.clear()  # waiters of an earlier run's workers, cancelled
        workers = [
            asyncio.create_task(self._worker(), name=f"poll:{self.name}:{i}")
            for i in range(self.concurrency)
        ]
        try:
            while True:
                self._wake.clear()
                while self._idle and (meter := self._take_due()) is not None:
                    self._idle.pop().set_result(meter)
                if not self._idle or not self._heap:
                    await self._wake.wait()
                    continue
                delay = self._heap[0][0] - self.monotonic()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
        finally:
            for t in workers:
                t.cancel()
            if workers:
                await asyncio.wait(workers)
            self._idle.clear()
            self._busy.clear()  # nothing is in flight any more
