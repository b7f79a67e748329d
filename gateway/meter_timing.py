"""When the service reads and ticks each meter: its poll interval follows its credit
forecast (within the bounds of gateway/poll_schedule.py; a meter whose supply is cut is
read now and then), and the core gets a ClockTick at each meter's next deadline
(midnight, a window edge, a tariff activation), which no reading brings on time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta

from gateway.config import PollingSettings
from gateway.core.events import ClockTick
from gateway.core.meter_state import forecast, next_deadline
from gateway.core.states import CreditState
from gateway.poll_schedule import interval_for
from gateway.runtime import CoreItem, MeterRuntime

log = logging.getLogger(__name__)

#: Credit states in which the supply is cut: polled at ``polling.cut_off_s``.
CUT_OFF = frozenset({CreditState.DISCONNECTED, CreditState.REMOTE_DISCONNECTED})


def adapt_interval(rt: MeterRuntime, now: datetime, polling: PollingSettings, speed: float) -> None:
    """Set the meter's poll interval for its forecast (gateway time at ``speed`` gateway
    seconds per real second; the intervals are real seconds)."""
    exhaustion = forecast(rt.state, now)
    left = None
    if exhaustion is not None:
        left = timedelta(seconds=(exhaustion - now).total_seconds() / speed)
    rt.poller.set_interval(
        rt.meter_id,
        interval_for(
            left,
            normal=polling.interval_s,
            minimum=polling.min_interval_s,
            maximum=polling.max_interval_s,
            cut_off=polling.cut_off_s if rt.state.credit in CUT_OFF else None,
        ),
    )


async def tick_at_deadlines(
    meters: Mapping[str, MeterRuntime],
    put: Callable[[CoreItem], Awaitable[None]],
    clock: Callable[[], datetime],
    period: float,
) -> None:
    """Every ``period`` seconds, ``put`` a ClockTick for each meter whose next deadline has
    passed; meters added to ``meters`` meanwhile (a reload) are picked up. Until cancelled."""
    deadlines: dict[str, datetime] = {}
    while True:
        now = clock()
        for meter_id in meters.keys() - deadlines.keys():  # at start, or reloaded
            deadlines[meter_id] = _deadline(meters, meter_id, now)
        for meter_id, due in list(deadlines.items()):
            if due <= now:
                await put(CoreItem(ClockTick(meter_id, now)))
                deadlines[meter_id] = _deadline(meters, meter_id, now)
        await asyncio.sleep(period)


def _deadline(meters: Mapping[str, MeterRuntime], meter_id: str, now: datetime) -> datetime:
    """The meter's next deadline; a state the core cannot place in time (a fault
    logged here) is asked again in an hour, never ending the clock for the others."""
    try:
        return next_deadline(meters[meter_id].state, now)
    except Exception:
        log.exception("meter %s: its next deadline could not be worked out", meter_id)
        return now + timedelta(hours=1)
