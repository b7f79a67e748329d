"""The periodic DL/T 645 time sync, on the real simulator over a socket: a bus's time sync runs again every time_sync_h, so a meter whose clock moved after the first broadcast is reported again (a second clock_drift) and set back by the next broadcast."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

import pytest

from gateway.core.events import MeterNotice
from gateway.runtime import CoreItem
from gateway.store import MeterRecord
from meter_sim.clock import ScaledClock
from meter_sim.dlt645_simulator import Dlt645Simulator
from protocol.dlt645.frame import Address
from tests.support.dlt645_runtime import bus_runtime

pytestmark = pytest.mark.asyncio

#: Two real seconds between syncs: room for the test's own reads between two of them.
SYNC_H = 2 / 3600
BOUND_S = 60.0


class Broadcasts(logging.Handler):
    """Counts the bus's "time broadcast" log lines, so a test can await the n-th one."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0
        self.changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "time broadcast" in record.getMessage():
            self.count += 1
            self.changed.set()

    async def reach(self, n: int) -> None:
        while self.count < n:
            self.changed.clear()
            await self.changed.wait()


async def test_the_time_is_synced_again_every_period(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "gateway")
    broadcasts = Broadcasts()
    logging.getLogger("gateway").addHandler(broadcasts)
    #: each notice with the number of the sync that sent it (its broadcast's number)
    notices: asyncio.Queue[tuple[MeterNotice, int]] = asyncio.Queue()

    async def enqueue(item: CoreItem) -> None:
        assert isinstance(item.work, MeterNotice)
        await notices.put((item.work, broadcasts.count + 1))

    async def next_drift() -> tuple[int, int]:
        notice, sync_no = await asyncio.wait_for(notices.get(), 20)
        assert (notice.meter_id, notice.name) == ("DLT-1", "clock_drift")
        drift = dict(notice.details)["drift_s"]
        assert isinstance(drift, int)
        return drift, sync_no

    # The simulated meters keep real UTC, as the runtime's clock: only meter 1 is off.
    async with Dlt645Simulator.start(meters=2, clock=ScaledClock(), baud=None) as sim:
        runtime = bus_runtime(
            sim, timeout_s=0.5, enqueue=enqueue, time_sync_h=SYNC_H, clock_drift_max_s=BOUND_S
        )
        for n in (1, 2):
            runtime.add(MeterRecord(f"DLT-{n}", "dlt-1", n, "dlt645_single_phase", b"k"))
        link = runtime.meters[1]

        async def meter_1_off_by() -> float:
            """Meter 1's clock against ours, read on the bus's own port: queued behind
            the sync's exchanges, so the meter has taken a broadcast sent before it."""
            clock = await link.io.read_clock(runtime.port, Address.of_number(1))
            return (clock.to_datetime(UTC) - datetime.now(UTC)).total_seconds()

        sim.set_clock_offset(1, 3600)
        sync = asyncio.create_task(runtime.run_time_sync())
        try:
            drift, sync_no = await next_drift()
            assert (sync_no, 3500 < drift < 3700) == (1, True)  # the start's check
            await broadcasts.reach(1)
            assert abs(await meter_1_off_by()) < BOUND_S  # set by the first broadcast
            sim.set_clock_offset(1, -7200)  # it moves after it
            drift, sync_no = await next_drift()
            assert sync_no > 1  # a later period's check saw it
            assert -7300 < drift < -7100
            await broadcasts.reach(sync_no)
            assert abs(await meter_1_off_by()) < BOUND_S  # set back
            await broadcasts.reach(sync_no + 1)  # a further period: nothing more to report
            assert notices.empty()
            assert abs(link.clock_offset_s) < BOUND_S
        finally:
            sync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sync
            await runtime.close()
            logging.getLogger("gateway").removeHandler(broadcasts)
