"""Acting on meters: relays as desired versus observed, display and alarm writes, keypad acks.

A relay command is written, then read back; until the two agree it is retried with
backoff, and if they never do a relay-fault is reported (the relay is welded, the
meter refuses, or someone is tampering). Writes go through the bus's port, so on RTU
they take their turn on the wire between polls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.meter_io import MeterIO
from gateway.modbus_port import MeterIOError, ModbusPort

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RelayOutcome:
    """What happened to one relay command."""

    meter_id: str
    desired: bool
    observed: bool | None
    attempts: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.observed is self.desired


@dataclass
class MeterTarget:
    """Where a meter lives: its port, unit id and register map."""

    meter_id: str
    port: ModbusPort
    unit: int
    io: MeterIO


async def drive_relay(
    target: MeterTarget,
    closed: bool,
    *,
    attempts: int = 4,
    first_delay: float = 0.2,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> RelayOutcome:
    """Write the relay coil and read it back until they agree, with doubling delays."""
    observed: bool | None = None
    error: str | None = None
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            await target.io.write_relay(target.port, target.unit, closed)
            observed = await target.io.read_relay(target.port, target.unit)
        except MeterIOError as exc:
            error = str(exc)
        else:
            if observed is closed:
                return RelayOutcome(target.meter_id, closed, observed, attempt)
            error = f"read back {'closed' if observed else 'open'} after commanding {'closed' if closed else 'open'}"
        if attempt < attempts:
            await sleep(delay)
            delay *= 2
    log.warning("relay of %s did not follow the command: %s", target.meter_id, error)
    return RelayOutcome(target.meter_id, closed, observed, attempts, error)
