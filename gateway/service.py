"""The gateway service: pollers and MQTT feed one queue; the core task
(gateway/core_task.py) decides and commits; then the shell acts on meters
(gateway/meter_actions.py) and the outbox drains (gateway/sync.py).

This module builds the meters' runtimes from the config and the store, turns what the
pollers see into core items, sends the clock's ticks and adapts each meter's poll interval
to its forecast (when to do those two: gateway/meter_timing.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from gateway.actuator import MeterTarget, RelayTarget, parse_relay_output
from gateway.config import GatewayConfig, RtuBus, TcpBus
from gateway.core.commands import Command, TopUpDecision
from gateway.core.events import (
    CommunicationLost,
    CommunicationRestored,
    Event,
    ManagementTokenAccepted,
    PollFailed,
    ReadingReceived,
)
from gateway.core.token_intake import KeypadEntry, KeypadGuard, OnlineTopUp, TokenOutcome
from gateway.core_task import CoreTask
from gateway.dlt645_bus import Dlt645BusRuntime
from gateway.meter_actions import LEASE_POINT, MeterActions
from gateway.meter_driver import MeterDriver, Relay
from gateway.meter_io import MeterIO, MeterSnapshot
from gateway.meter_timing import CUT_OFF as CUT_OFF  # noqa: PLC0414 (re-export)
from gateway.meter_timing import adapt_interval, tick_at_deadlines
from gateway.modbus_port import MeterIOError, ModbusPort, RtuPort, TcpPort
from gateway.poller import BusPoller, PolledMeter
from gateway.runtime import CoreItem, Counters, MeterRuntime, StepResult, utc_now
from gateway.store import MeterRecord, Store, StoredMeter
from protocol.errors import MapError
from protocol.regmap import load_map
from protocol.tokens.keys import MeterKey
from protocol.tokens.replay import ReplayWindow

log = logging.getLogger(__name__)

#: Consecutive failed polls before a meter is reported as not communicating.
COMM_LOST_AFTER = 3


@dataclass
class Gateway:
    """The long-running service: its tasks are :meth:`run_core`, :meth:`run_pollers` and
    :meth:`run_clock`, each run until cancelled."""

    config: GatewayConfig
    store: Store
    clock: Callable[[], datetime] = utc_now
    monotonic: Callable[[], float] = time.monotonic
    meters: dict[str, MeterRuntime] = field(default_factory=dict)
    pollers: dict[str, BusPoller] = field(default_factory=dict)
    ports: dict[str, ModbusPort] = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)
    #: the buses whose protocol is DL/T 645, by name (their ports are in ``ports`` too)
    dlt645: dict[str, Dlt645BusRuntime] = field(default_factory=dict)
    #: gateway seconds per real second (an accelerated clock for demos and tests)
    speed: float = 1.0
    core: CoreTask = field(init=False)
    actions: MeterActions = field(init=False)

    def __post_init__(self) -> None:
        self.core = CoreTask(
            self.store,
            self.config.tokens,
            self.meters,
            self.counters,
            self._carry_out_on_meter,
            clock=self.clock,
            monotonic=self.monotonic,
        )
        self.actions = MeterActions(
            self.counters,
            self.core.queue.put,
            self.config.polling.interval_s,
            clock=self.clock,
            monotonic=self.monotonic,
            speed=self.speed,
        )

    @property
    def queue(self) -> asyncio.Queue[CoreItem]:
        return self.core.queue

    @property
    def storage_problem(self) -> str | None:
        return self.core.storage_problem

    async def submit(self, work: Event | KeypadEntry | OnlineTopUp) -> StepResult:
        """Queue one item and wait until what it led to is committed."""
        return await self.core.submit(work)

    async def run_core(self) -> None:
        await self.core.run()

    def _carry_out_on_meter(
        self,
        rt: MeterRuntime,
        commands: list[Command],
        outcome: TokenOutcome | None,
        now: datetime,
    ) -> None:
        self.actions.carry_out(rt, commands, outcome)
        dlt645 = self.dlt645.get(rt.stored.record.bus)
        if dlt645 is not None:
            dlt645.after_step(rt)
        adapt_interval(rt, now, self.config.polling, self.speed)
        if outcome is not None and rt.meter_id in rt.poller.meters:
            # A top-up: read the meter at once (a cut-off one is read only now and then).
            rt.poller.poll_now(rt.meter_id)
        if outcome is not None and outcome.verdict != "already_consumed":
            # A purchase is worth a line in the log (an operator's first question).
            decision = next((c for c in commands if isinstance(c, TopUpDecision)), None)
            management = (
                outcome.event if isinstance(outcome.event, ManagementTokenAccepted) else None
            )
            if management is not None and (outcome.accepted or (decision and decision.accepted)):
                log.info(
                    "meter %s: %s token %s carried out (value %d)", rt.meter_id,
                    management.token_class, management.token_id, management.value,
                )  # fmt: skip
            elif decision is not None and decision.accepted:
                log.info(
                    "meter %s: token %s credited %d", rt.meter_id, decision.token_id,
                    decision.credited,
                )  # fmt: skip
            else:
                reason = decision.reason if decision is not None else outcome.verdict
                log.info("meter %s: token refused (%s)", rt.meter_id, reason)

    # ------------------------------------------------------------------ setup

    def _port_for(self, bus: RtuBus | TcpBus) -> ModbusPort:
        if isinstance(bus, TcpBus):
            return TcpPort(
                bus.name,
                bus.host,
                bus.port,
                concurrency=bus.concurrency,
                connections=bus.connections,
                timeout=bus.timeout_s,
            )
        return RtuPort(
            bus.name,
            bus.device,
            baud=bus.baud,
            timeout=bus.timeout_s,
            guard=bus.guard_s,
            parity=bus.parity,
            stopbits=bus.stopbits,
        )

    def load(self) -> None:
        """Build pollers, ports and runtimes from the config and the store."""
        polling = self.config.polling
        for bus in self.config.buses:
            if isinstance(bus, RtuBus) and bus.protocol == "dlt645":
                dlt645 = Dlt645BusRuntime(bus, self.clock, self.queue.put, self.speed)
                self.dlt645[bus.name] = dlt645
                port: ModbusPort = dlt645.line
            else:
                port = self._port_for(bus)
            self.ports[bus.name] = port
            self.pollers[bus.name] = BusPoller(
                bus.name,
                port,
                self._on_reading,
                self._on_failure,
                concurrency=bus.concurrency if isinstance(bus, TcpBus) else 1,
                retries=bus.retries,
                backoff_cap=polling.backoff_max_s,
                monotonic=self.monotonic,
            )
        self._start_meters(self.store.load_meters())

    async def reload_meters(self) -> list[str]:
        """Start polling the meters enrolled in the store since :meth:`load` (SIGHUP from
        ``meter-provision enrol``); meters already running are left as they are. The ids
        of the meters started."""
        stored = await asyncio.to_thread(self.store.load_meters)
        rekeyed = 0
        for s in stored:
            running = self.meters.get(s.record.meter_id)
            if running is None:
                continue
            # Keys installed since (meter-provision keys install). Added or replaced, never
            # taken away here: a key change being committed now still finds its key, and
            # adopting it drops the keys of the epochs passed.
            installed = {e: MeterKey(k) for e, k in s.next_keys.items()}
            if any(running.next_keys.get(e) != k for e, k in installed.items()):
                running.next_keys |= installed
                rekeyed += 1
        if rekeyed:
            log.info(
                "reload: keys of later epochs for %d meters (a key change may move them there)",
                rekeyed,
            )
        return self._start_meters(s for s in stored if s.record.meter_id not in self.meters)

    def _start_meters(self, meters: Iterable[StoredMeter]) -> list[str]:
        """Runtimes for stored meters, scheduled on their buses' pollers; the ids started
        (a meter on a bus the config does not name is logged and left out)."""
        polling = self.config.polling
        started: list[str] = []
        maps: dict[str, MeterIO] = {}
        io: MeterDriver
        relay: Relay | None
        for stored in meters:
            rec = stored.record
            poller = self.pollers.get(rec.bus)
            if poller is None:
                log.error(
                    "meter %s is on bus %s, which the config does not name", rec.meter_id, rec.bus
                )
                continue
            dlt645 = self.dlt645.get(rec.bus)
            if dlt645 is not None:
                try:
                    io, relay = dlt645.add(rec)
                except (ValueError, MapError) as exc:
                    log.error("meter %s: not polled: %s", rec.meter_id, exc)
                    continue
            else:
                modbus_io = maps.get(rec.map_name)
                if modbus_io is None:
                    modbus_io = maps[rec.map_name] = MeterIO(load_map(rec.map_name))
                io, relay = modbus_io, self._relay_of(rec, poller.port, modbus_io)
            polled = PolledMeter(rec.meter_id, rec.unit_id, io, polling.interval_s)
            window = (
                ReplayWindow(
                    stored.token_window.epoch,
                    stored.token_window.highest,
                    stored.token_window.bitmap,
                )
                if stored.token_window is not None
                else ReplayWindow.fresh(rec.key_epoch)
            )
            runtime = MeterRuntime(
                stored=stored,
                state=stored.state,
                window=window,
                lockout=KeypadGuard.from_stored(stored.lockout),
                target=MeterTarget(rec.meter_id, poller.port, rec.unit_id, io, relay),
                polled=polled,
                poller=poller,
                key=MeterKey(rec.meter_key),
                next_keys={e: MeterKey(k) for e, k in stored.next_keys.items()},
            )
            self.meters[rec.meter_id] = runtime
            if dlt645 is not None:
                dlt645.attach(runtime)
            poller.add(polled)
            adapt_interval(runtime, self.clock(), polling, self.speed)
            started.append(rec.meter_id)
        return started

    def _relay_of(self, rec: MeterRecord, port: ModbusPort, io: MeterIO) -> RelayTarget | None:
        """The meter's own relay coil, or its enrolled relay output, or None."""
        if io.regmap.has("relay"):
            return RelayTarget(port, rec.unit_id, io.regmap.point("relay").address)
        if rec.relay_output is None:
            return None
        try:
            bus, unit, coil = parse_relay_output(rec.relay_output)
            return RelayTarget(self.ports[bus], unit, coil, external=True)
        except (ValueError, KeyError) as exc:
            log.error("meter %s: relay output %r unusable: %s", rec.meter_id, rec.relay_output, exc)
            return None

    # ------------------------------------------------------------------ pollers → queue

    async def _on_reading(self, polled: PolledMeter, snap: MeterSnapshot) -> None:
        rt = self.meters[polled.meter_id]
        now = self.clock()
        self.counters.readings += 1
        rt.last_reading_at = now
        if not rt.state.comm_ok:
            await self.queue.put(CoreItem(CommunicationRestored(rt.meter_id, now)))
        flags = snap.flags
        relay = snap.relay_closed
        module = rt.target.relay
        unreadable = False
        if isinstance(module, RelayTarget) and module.external:
            relay = await self._read_relay_module(rt, module)
            unreadable = relay is None
        if rt.relay_task is not None and not rt.relay_task.done():
            relay = None  # being switched right now: this reading cannot tell
        elif relay is not None and relay is rt.relay_desired:
            rt.relay_retries = 0  # the relay follows again: a new disagreement starts afresh
            rt.relay_retry_at = 0.0
        await self.queue.put(
            CoreItem(
                ReadingReceived(
                    rt.meter_id,
                    snap.energy_import_wh,
                    now,
                    power_w=snap.power_w,
                    relay_closed=relay,
                    cover_open="cover_open" in flags,
                    magnetic_tamper="magnetic_tamper" in flags,
                    load_limit_tripped="load_limit_tripped" in flags,
                    reverse_energy="reverse_energy" in flags,
                    button_pressed="reconnect_button" in flags,
                    voltage_v=snap.voltage_v,
                    relay_unreadable=unreadable,
                    resolution_wh=snap.resolution_wh,
                    measured=snap.measured,
                )
            )
        )
        if (
            "keypad_pending" in flags
            and snap.keypad_seq is not None
            and snap.keypad_digits is not None
        ):
            await self.queue.put(
                CoreItem(KeypadEntry(rt.meter_id, snap.keypad_seq, snap.keypad_digits, now))
            )

    async def _read_relay_module(self, rt: MeterRuntime, module: RelayTarget) -> bool | None:
        """The contactor's position from the relay module switching a meter without a
        relay of its own, read with each reading of the meter: the core judges bypass
        (energy while it reads open) and relay mismatches from it as from a meter's own
        relay. None when the module does not answer (the reading still bills, and the
        core reports ``relay_unreachable`` once while it lasts)."""
        try:
            return await module.read()
        except MeterIOError as exc:
            self.counters.relay_faults += 1
            log.warning("meter %s: relay module did not answer: %s", rt.meter_id, exc)
            return None

    async def _on_failure(self, polled: PolledMeter, error: MeterIOError) -> None:
        rt = self.meters[polled.meter_id]
        now = self.clock()
        self.counters.poll_failures += 1
        await self.queue.put(CoreItem(PollFailed(rt.meter_id, str(error), now, error.kind.value)))
        if polled.consecutive_failures == COMM_LOST_AFTER:
            self_trips = rt.target.io.regmap.has(LEASE_POINT)
            await self.queue.put(
                CoreItem(CommunicationLost(rt.meter_id, now, error.kind.value, self_trips))
            )

    # ------------------------------------------------------------------ time

    async def run_clock(self, period: float = 30.0) -> None:
        """Send each meter a ClockTick when its next deadline (midnight, window edge,
        tariff activation) has passed."""
        await tick_at_deadlines(self.meters, self.queue.put, self.clock, period)

    async def run_pollers(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for name, poller in self.pollers.items():
                tg.create_task(poller.run(), name=f"poll:{name}")
            for name, dlt645 in self.dlt645.items():
                tg.create_task(dlt645.run_time_sync(), name=f"timesync:{name}")

    async def close(self) -> None:
        await self.actions.close()
        for dlt645 in self.dlt645.values():
            await dlt645.close()
        for port in self.ports.values():
            with contextlib.suppress(Exception):
                await port.close()
