"""The clocks of a DL/T 645 bus's meters: read, reported when off, set by broadcast time.

At start and every ``time_sync_h`` gateway hours the bus reads each meter's clock (a
``clock_drift`` event for one further off than ``clock_drift_max_s``), broadcasts the time
(08H, in the bus's ``time_zone``), and reads again the clocks that were off: commands
carry a deadline on the meter's own clock, so each meter's offset is kept, also for one
that did not take the broadcast (real meters refuse one that moves their clock too far).
The bus runtime (:class:`gateway.dlt645_bus.Dlt645BusRuntime`) holds the meters and the
port; these functions are its time part.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from typing import TYPE_CHECKING

from gateway.modbus_port import MeterIOError
from protocol.dlt645.clock import MeterTime
from protocol.dlt645.meter_map import Dlt645Capability
from protocol.event_kinds import EventKind

if TYPE_CHECKING:
    from gateway.dlt645_bus import Dlt645BusRuntime, Dlt645Link

log = logging.getLogger(__name__)


async def run_time_sync(bus: Dlt645BusRuntime) -> None:
    """Check every meter's clock, then broadcast the time: at start and every
    ``time_sync_h`` gateway hours, until cancelled."""
    period = bus.settings.time_sync_h * 3600 / bus.speed
    while True:
        await sync_time(bus)
        await asyncio.sleep(period)


async def sync_time(bus: Dlt645BusRuntime) -> None:
    """Read each clock (a ``clock_drift`` event beyond the bound), broadcast the time,
    then read again the clocks that were off, in case a meter refused the broadcast
    (real meters refuse one that moves their clock too far): commands' deadlines
    follow each meter's own clock."""
    bound = bus.settings.clock_drift_max_s
    drifting: list[Dlt645Link] = []
    for link in list(bus.meters.values()):
        drift = await clock_offset(bus, link)
        if drift is None:
            continue
        link.clock_offset_s = drift
        if abs(drift) > bound:
            drifting.append(link)
            await bus.notice(
                link,
                EventKind.CLOCK_DRIFT,
                f"the meter's clock is {abs(drift):.0f} s {'ahead' if drift > 0 else 'behind'}",
                drift_s=round(drift),
                bound_s=bound,
            )
    now = bus.clock().astimezone(bus.zone)
    try:
        await bus.port.broadcast_time(MeterTime.from_datetime(now))
    except MeterIOError as exc:
        log.warning("bus %s: broadcast time failed: %s", bus.bus.name, exc)
        return
    log.info("bus %s: time broadcast (%s)", bus.bus.name, now.isoformat(timespec="seconds"))
    for link in bus.meters.values():
        if link not in drifting:
            link.clock_offset_s = 0.0  # close enough, and set again now
    for link in drifting:
        drift = await clock_offset(bus, link)
        if drift is not None:
            link.clock_offset_s = drift


async def clock_offset(bus: Dlt645BusRuntime, link: Dlt645Link) -> float | None:
    """How far the meter's clock is ahead of ours (s); None when it has none or did not
    answer."""
    if not link.can(Dlt645Capability.CLOCK):
        return None
    try:
        started = time.monotonic()
        clock = await link.io.read_clock(bus.port, link.address)
        took = time.monotonic() - started
    except MeterIOError as exc:
        log.info("meter %s: clock not read: %s", link.meter_id, exc)
        return None
    # The meter's time was read during the exchanges: compare with the middle of them.
    now = bus.clock() - timedelta(seconds=took * bus.speed / 2)
    return (clock.to_datetime(bus.zone) - now).total_seconds()
