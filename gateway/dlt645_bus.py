"""A DL/T 645 bus in the gateway: its meters are polled, billed and switched like any other.

The service keeps one :class:`Dlt645BusRuntime` per bus whose ``protocol`` is
``"dlt645"``. It hands the service what a Modbus bus has (a port for the poller, a driver
per meter model, a relay per meter) and does the rest of the protocol's part:

- the relay is switched by remote control (1CH): trip (1AH) when the core opens it,
  direct close (1CH) when it closes it. A meter whose settings wait for the customer's
  button (``reconnect_needs_button``) is sent close allowed (1BH) when the core arms its
  reconnect (``reconnect_armed``); the customer's button then closes the relay, which a
  reading shows as a closed relay with no command to open it: that is the button press
  the core waits for. The relay is read back from status word 3, so the relay-mismatch
  rules judge it by the readings, as a PE-1 meter's status register;
- after each committed step the meter is brought where the state says, from what its
  status word showed: protected supply on or off (3AH/3BH), the alarm on or off with the
  low-credit states (2AH/2BH), and close allowed while armed;
- a poll reads energy and the status word; every ``measured_every``-th poll of a meter
  also reads the bus's ``measured`` points its model has, which the reading then carries
  (a point the meter answers with "no such data" is not asked again). The meters take
  turns (the k-th on the bus first at its poll k mod ``measured_every``), so a round of
  the bus reads them for one meter in ``measured_every`` and no round is much longer
  than another, the first after a start included;
- broadcast time (08H) at start and every ``time_sync_h`` (gateway hours), after reading
  each meter's clock: one further off than ``clock_drift_max_s`` is a ``clock_drift``
  event (:mod:`gateway.dlt645_time`);
- a meter enrolled as ``esam`` (State Grid 2013, remote control encrypted with the
  utility's security module) or without a password is read and billed but not switched:
  each time the core would switch it, a ``relay_not_switched`` event says why.

Commands carry a valid-until five minutes on, in the bus's ``time_zone`` (the meters'
clocks). Passwords and operator codes come from the store (``control_secret``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from gateway import dlt645_time
from gateway.config import Dlt645Settings, RtuBus
from gateway.core.events import MeterNotice
from gateway.core.reports import ALARM_STATES
from gateway.core.states import CreditState
from gateway.dlt645_io import (
    ESAM_REASON,
    NO_CONTROL_REASON,
    Dlt645Credentials,
    Dlt645MeterIO,
    command_deadline,
    parse_control_secret,
)
from gateway.dlt645_port import Dlt645IOError, Dlt645Port
from gateway.meter_driver import PointNames
from gateway.meter_io import MeterSnapshot
from gateway.modbus_port import IOFailure, MeterIOError, ModbusPort
from gateway.owned_tasks import OwnedTasks
from gateway.runtime import CoreItem, MeterRuntime
from gateway.store import MeterRecord
from protocol.codec import Value
from protocol.dlt645.clock import MeterTime
from protocol.dlt645.frame import Address
from protocol.dlt645.meter_map import (
    ALARM_BIT,
    PROTECTED_BIT,
    RELAY_COMMAND_OPEN_BIT,
    RELAY_OPEN_BIT,
    Dlt645Capability,
    load_dlt645_map,
)
from protocol.dlt645.terms import ControlCommand
from protocol.event_kinds import EventKind
from protocol.modbus.pdu import Request

log = logging.getLogger(__name__)

#: The flag a reading carries when the customer closed an allowed relay (the core's
#: button press; the Modbus poll path sets it from PE-1 status bit 4).
BUTTON_FLAG = "reconnect_button"


def dlt645_port_for(bus: RtuBus, timeout: float | None = None) -> Dlt645Port:
    """The port of a DL/T 645 bus; ``timeout`` shortens its reply timeout (a scan's probes)."""
    return Dlt645Port(
        bus.name,
        bus.device,
        baud=bus.baud,
        parity=bus.parity,
        stopbits=bus.stopbits,
        timeout=timeout or bus.timeout_s,
        guard=bus.guard_s,
    )


@dataclass
class Dlt645Link:
    """One DL/T 645 meter on this bus: where it is, how to command it, what it last showed."""

    meter_id: str
    address: Address
    io: Dlt645MeterIO
    credentials: Dlt645Credentials | None
    #: why this meter is not switched (None: it is)
    unswitched: str | None = None
    #: the status flags of its last reading (None: not read since start)
    flags: frozenset[str] | None = None
    runtime: MeterRuntime | None = None
    #: the relay position the last ``relay_not_switched`` event was about
    refused_for: bool | None = None
    #: how far its clock is ahead of ours (s), as last measured: commands' deadlines are
    #: on its clock
    clock_offset_s: float = 0.0
    sync_task: asyncio.Task[None] | None = None
    #: its good reads since start
    reads: int = 0
    #: its turn among the bus's meters: the measured points are read when ``reads +
    #: phase`` is a multiple of ``measured_every``
    phase: int = 0
    #: measured points it answered with an error reply (no such data): not asked again
    refused: frozenset[str] = frozenset()

    def can(self, capability: Dlt645Capability) -> bool:
        return capability in self.io.model_map.capabilities


class Dlt645Line:
    """The poller's port for a DL/T 645 bus, shaped as a Modbus port: the meters' drivers
    use the bus's :class:`Dlt645Port` through it. A Modbus request on it (a relay output
    enrolled on this bus by mistake) is refused, typed."""

    def __init__(self, name: str, port: Dlt645Port) -> None:
        self.name = name
        self.port = port

    async def request(self, request: Request) -> tuple[int, ...]:
        raise MeterIOError(
            request.unit, IOFailure.EXCEPTION, f"bus {self.name} speaks DL/T 645, not Modbus"
        )

    async def close(self) -> None:
        await self.port.close()


class Dlt645Driver:
    """A DL/T 645 model's driver for the poller and the meter actions."""

    def __init__(self, bus: Dlt645BusRuntime, io: Dlt645MeterIO) -> None:
        self.bus = bus
        self.io = io

    @property
    def regmap(self) -> PointNames:
        return self.io.model_map  # no display, alarm or lease registers: none are written

    @property
    def status_reports_relay(self) -> bool:
        return any(RELAY_OPEN_BIT in p.bits for p in self.io.model_map.status_points)

    async def read(self, port: ModbusPort, unit: int) -> MeterSnapshot:
        address = Address.of_number(unit)
        link = self.bus.meters.get(unit)
        if link is None:
            return await self.io.read(self.bus.port, address)
        snapshot, refused = await self.io.read_with(self.bus.port, address, self.bus.due(link))
        link.reads += 1
        if refused - link.refused:
            names = ", ".join(sorted(refused - link.refused))
            log.info("meter %s: no such data: %s (not read again)", link.meter_id, names)
            link.refused |= refused
        return self.bus.seen(unit, snapshot)

    async def write_points(self, port: ModbusPort, unit: int, values: dict[str, Value]) -> None:
        raise MeterIOError(unit, IOFailure.EXCEPTION, "a DL/T 645 meter has no registers to write")


@dataclass(frozen=True, slots=True)
class Dlt645Relay:
    """A DL/T 645 meter's relay: remote control, read back from the status word."""

    bus: Dlt645BusRuntime
    link: Dlt645Link

    async def write(self, closed: bool) -> None:
        await self.bus.switch(self.link, closed)

    async def read(self) -> bool:
        return await self.link.io.read_relay(self.bus.port, self.link.address)


@dataclass
class Dlt645BusRuntime:
    """One DL/T 645 bus: its port, its meters and the tasks that keep them in step."""

    bus: RtuBus
    #: the gateway's clock (accelerated in simulations)
    clock: Callable[[], datetime]
    #: puts an item on the core task's queue (a notice about a meter)
    enqueue: Callable[[CoreItem], Awaitable[None]]
    speed: float = 1.0
    port: Dlt645Port = field(init=False)
    line: Dlt645Line = field(init=False)
    settings: Dlt645Settings = field(init=False)
    zone: ZoneInfo = field(init=False)
    meters: dict[int, Dlt645Link] = field(default_factory=dict)
    drivers: dict[str, Dlt645Driver] = field(default_factory=dict)
    _tasks: OwnedTasks = field(default_factory=OwnedTasks, init=False, repr=False)

    def __post_init__(self) -> None:
        bus = self.bus
        self.port = dlt645_port_for(bus)
        self.line = Dlt645Line(bus.name, self.port)
        self.settings = bus.dlt645_settings
        self.zone = ZoneInfo(self.settings.time_zone)

    # ------------------------------------------------------------------ meters

    def add(self, rec: MeterRecord) -> tuple[Dlt645Driver, Dlt645Relay | None]:
        """The driver and relay of an enrolled meter (ValueError: its record is unusable)."""
        driver = self.drivers.get(rec.map_name)
        if driver is None:
            model_map = load_dlt645_map(rec.map_name)
            io = Dlt645MeterIO(model_map, measured=self.settings.measured)
            driver = self.drivers[rec.map_name] = Dlt645Driver(self, io)
        address = Address.of_number(rec.unit_id)
        creds = parse_control_secret(rec.control_secret) if rec.control_secret else None
        unswitched = None
        if creds is None:
            unswitched = ESAM_REASON if rec.control_secret else NO_CONTROL_REASON
        turn = -len(self.meters) % self.settings.measured_every
        link = Dlt645Link(rec.meter_id, address, driver.io, creds, unswitched, phase=turn)
        self.meters[rec.unit_id] = link
        if not link.can(Dlt645Capability.RELAY):
            return driver, None
        return driver, Dlt645Relay(self, link)

    def attach(self, rt: MeterRuntime) -> None:
        """The meter's runtime, once the service has built it."""
        self.meters[rt.polled.unit].runtime = rt

    def due(self, link: Dlt645Link) -> tuple[str, ...]:
        """The measured points to read at this poll of a meter: at every
        ``measured_every``-th poll (at its turn) those of its model, less the ones it
        refused."""
        if (link.reads + link.phase) % self.settings.measured_every:
            return ()
        return tuple(name for name in link.io.measured if name not in link.refused)

    def seen(self, unit: int, snapshot: MeterSnapshot) -> MeterSnapshot:
        """A reading, as the core should see it: a relay the customer closed after close
        allowed (closed, no command to open it) while the core waits for the button is the
        button press, not a relay that disobeys."""
        link = self.meters.get(unit)
        if link is None:
            return snapshot
        link.flags = snapshot.flags
        rt = link.runtime
        if (
            rt is not None
            and rt.state.credit is CreditState.RECONNECT_ARMED
            and snapshot.relay_closed is True
            and RELAY_COMMAND_OPEN_BIT not in snapshot.flags
        ):
            return replace(snapshot, relay_closed=None, flags=snapshot.flags | {BUTTON_FLAG})
        return snapshot

    # ------------------------------------------------------------------ commands

    def deadline(self, link: Dlt645Link) -> MeterTime:
        """Five minutes on, on the meter's clock."""
        now = self.clock().astimezone(self.zone) + timedelta(seconds=link.clock_offset_s)
        return command_deadline(now)

    async def command(self, link: Dlt645Link, command: ControlCommand) -> None:
        """One remote-control command to a meter we can switch."""
        assert link.credentials is not None
        deadline = self.deadline(link)
        await link.io.control(self.port, link.address, link.credentials, command, deadline)
        log.info("meter %s: %s sent", link.meter_id, command.name.lower())

    async def switch(self, link: Dlt645Link, closed: bool) -> None:
        """Open (1AH) or close (1CH) the relay."""
        if link.unswitched is not None:
            if link.refused_for is not closed:
                link.refused_for = closed
                await self.notice(
                    link,
                    EventKind.RELAY_NOT_SWITCHED,
                    link.unswitched,
                    wanted="closed" if closed else "open",
                )
            raise Dlt645IOError(link.address, IOFailure.EXCEPTION, link.unswitched)
        await self.command(link, ControlCommand.CLOSE if closed else ControlCommand.TRIP)

    def after_step(self, rt: MeterRuntime) -> None:
        """Bring the meter where its committed state says (protected supply, alarm, close
        allowed while armed), from what its last reading showed; one task per meter."""
        link = self.meters.get(rt.polled.unit)
        if link is None or link.flags is None or link.credentials is None:
            return
        if link.sync_task is not None and not link.sync_task.done():
            return  # the reading after it will show what is still to do
        wanted = self._commands_due(link, rt)
        if wanted:
            link.sync_task = self._tasks.spawn(
                self._send_all(link, wanted), f"dlt645:{rt.meter_id}"
            )

    def _commands_due(self, link: Dlt645Link, rt: MeterRuntime) -> list[ControlCommand]:
        flags = link.flags or frozenset()
        credit = rt.state.credit
        due: list[ControlCommand] = []
        if link.can(Dlt645Capability.PROTECT):
            protect = credit is CreditState.PROTECTED
            if protect is not (PROTECTED_BIT in flags):
                due.append(ControlCommand.PROTECT if protect else ControlCommand.PROTECT_OFF)
        if link.can(Dlt645Capability.ALARM):
            alarm = credit in ALARM_STATES
            if alarm is not (ALARM_BIT in flags):
                due.append(ControlCommand.ALARM if alarm else ControlCommand.ALARM_OFF)
        if (
            credit is CreditState.RECONNECT_ARMED
            and link.can(Dlt645Capability.CLOSE_ALLOWED)
            and RELAY_COMMAND_OPEN_BIT in flags
        ):
            due.append(ControlCommand.ALLOW_CLOSE)
        return due

    async def _send_all(self, link: Dlt645Link, commands: list[ControlCommand]) -> None:
        flags = set(link.flags or ())
        for command in commands:
            try:
                await self.command(link, command)
            except MeterIOError as exc:
                log.warning("meter %s: %s failed: %s", link.meter_id, command.name.lower(), exc)
                return  # the next reading shows what is still to do
            match command:  # what the meter shows now, until its next reading
                case ControlCommand.PROTECT:
                    flags.add(PROTECTED_BIT)
                case ControlCommand.PROTECT_OFF:
                    flags.discard(PROTECTED_BIT)
                case ControlCommand.ALARM:
                    flags.add(ALARM_BIT)
                case ControlCommand.ALARM_OFF:
                    flags.discard(ALARM_BIT)
                case ControlCommand.ALLOW_CLOSE:
                    flags.discard(RELAY_COMMAND_OPEN_BIT)
                case _:
                    pass
            link.flags = frozenset(flags)

    # ------------------------------------------------------------------ time

    async def run_time_sync(self) -> None:
        """Check the clocks and broadcast the time at start and every ``time_sync_h``
        gateway hours, until cancelled (:mod:`gateway.dlt645_time`)."""
        await dlt645_time.run_time_sync(self)

    async def sync_time(self) -> None:
        """Check the clocks and broadcast the time once (:mod:`gateway.dlt645_time`)."""
        await dlt645_time.sync_time(self)

    # ------------------------------------------------------------------ the rest

    async def notice(self, link: Dlt645Link, name: EventKind, reason: str, **details: Any) -> None:
        """An event about one meter, through the core task (published, logged)."""
        log.warning("meter %s: %s: %s", link.meter_id, name, reason)
        notice = MeterNotice(link.meter_id, self.clock(), name, reason, tuple(details.items()))
        await self.enqueue(CoreItem(notice))

    async def close(self) -> None:
        """Stop the commands in flight (the next start brings the meters in step again)."""
        await self._tasks.cancel_all()
        with contextlib.suppress(Exception):
            await self.port.close()
