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

from gateway.meter_driver import MeterDriver, Relay
from gateway.modbus_port import MeterIOError, ModbusPort
from protocol import modbus

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


@dataclass(frozen=True, slots=True)
class RelayTarget:
    """Where a meter's supply relay is: the meter's own relay coil, or a relay output on
    a relay module for a meter without one (any unit on any bus the gateway polls)."""

    port: ModbusPort
    unit: int
    coil: int
    #: a relay module's coil (``relay_output``), not the meter's own relay: the meter's
    #: readings cannot tell its position, so each reading reads the coil as well
    external: bool = False

    async def write(self, closed: bool) -> None:
        await self.port.request(modbus.write_coil(self.unit, self.coil, closed))

    async def read(self) -> bool:
        (bit,) = await self.port.request(modbus.read_coils(self.unit, self.coil, 1))
        return bool(bit)


def parse_relay_output(text: str) -> tuple[str, int, int]:
    """``BUS:UNIT:COIL`` -> (bus, unit, coil); ValueError says what is wrong."""
    parts = text.split(":")
    if len(parts) != 3 or not parts[0]:
        raise ValueError(f"relay output {text!r} must be BUS:UNIT:COIL")
    try:
        unit, coil = int(parts[1]), int(parts[2])
    except ValueError:
        raise ValueError(f"relay output {text!r}: unit and coil are numbers") from None
    if not 1 <= unit <= 247 or not 0 <= coil <= 0xFFFF:
        raise ValueError(f"relay output {text!r}: unit 1..247, coil 0..65535")
    return parts[0], unit, coil


@dataclass
class MeterTarget:
    """Where a meter lives: its port, unit id and register map, and its relay (None for a
    metering-only meter)."""

    meter_id: str
    port: ModbusPort
    unit: int
    io: MeterDriver
    relay: Relay | None = None


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
    relay = target.relay
    if relay is None:
        return RelayOutcome(target.meter_id, closed, None, 0, "this meter has no relay")
    for attempt in range(1, attempts + 1):
        try:
            await relay.write(closed)
            observed = await relay.read()
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
