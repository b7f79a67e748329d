"""The gateway service: pollers and MQTT feed one queue; the core task
(gateway/core_task.py) decides and commits; then the shell acts on meters
(gateway/meter_actions.py) and the outbox drains (gateway/sync.py).

This module builds the meters' runtimes from the config and the store, turns what the
pollers see into core items, sends the clock's ticks and adapts each meter's poll interval
to its forecast.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from gateway.actuator import MeterTarget, RelayTarget, parse_relay_output
from gateway.config import GatewayConfig, RtuBus, TcpBus
from gateway.core.commands import Command, TopUpDecision
from gateway.core.events import (
    ClockTick,
    CommunicationLost,
    CommunicationRestored,
    Event,
    PollFailed,
    ReadingReceived,
)
from gateway.core.meter_state import forecast, next_deadline
from gateway.core.token_intake import KeypadEntry, KeypadGuard, OnlineTopUp, TokenOutcome
from gateway.core_task import CoreTask
from gateway.meter_actions import LEASE_POINT, MeterActions
from gateway.meter_io import MeterIO, MeterSnapshot
from gateway.modbus_port import MeterIOError, ModbusPort, RtuPort, TcpPort
from gateway.poll_schedule import interval_for
from gateway.poller import BusPoller, PolledMeter
from gateway.runtime import CoreItem, Counters, MeterRuntime, StepResult, utc_now
from gateway.store import MeterRecord, Store, StoredMeter
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
        self._adapt_interval(rt, now)
        if outcome is not None and outcome.verdict != "already_consumed":
            # A purchase is worth a line in the log (an operator's first question).
            decision = next((c for c in commands if isinstance(c, TopUpDecision)), None)
            if decision is not None and decision.accepted:
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
        return self._start_meters(s for s in stored if s.record.meter_id not in self.meters)

    def _start_meters(self, meters: Iterable[StoredMeter]) -> list[str]:
        """Runtimes for stored meters, scheduled on their buses' pollers; the ids started
        (a meter on a bus the config does not name is logged and left out)."""
        polling = self.config.polling
        started: list[str] = []
        maps: dict[str, MeterIO] = {}
        for stored in meters:
            rec = stored.record
            poller = self.pollers.get(rec.bus)
            if poller is None:
                log.error(
                    "meter %s is on bus %s, which the config does not name", rec.meter_id, rec.bus
                )
                continue
            io = maps.get(rec.map_name)
            if io is None:
                io = maps[rec.map_name] = MeterIO(load_map(rec.map_name))
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
                target=MeterTarget(
                    rec.meter_id, poller.port, rec.unit_id, io, self._relay_of(rec, poller.port, io)
                ),
                polled=polled,
                poller=poller,
                key=MeterKey(rec.meter_key),
            )
            self.meters[rec.meter_id] = runtime
            poller.add(polled)
            self._adapt_interval(runtime, self.clock())
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
            return RelayTarget(self.ports[bus], unit, coil)
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

    def _adapt_interval(self, rt: MeterRuntime, now: datetime) -> None:
        polling = self.config.polling
        exhaustion = forecast(rt.state, now)
        left = None
        if exhaustion is not None:
            left = timedelta(seconds=(exhaustion - now).total_seconds() / self.speed)
        rt.poller.set_interval(
            rt.meter_id,
            interval_for(
                left,
                normal=polling.interval_s,
                minimum=polling.min_interval_s,
                maximum=polling.max_interval_s,
            ),
        )

    async def run_clock(self, period: float = 30.0) -> None:
        """Send each meter a ClockTick when its next deadline (midnight, window edge,
        tariff activation) has passed."""
        deadlines: dict[str, datetime] = {}
        while True:
            now = self.clock()
            for meter_id in self.meters.keys() - deadlines.keys():  # at start, or reloaded
                deadlines[meter_id] = self._deadline(meter_id, now)
            for meter_id, due in list(deadlines.items()):
                if due <= now:
                    await self.queue.put(CoreItem(ClockTick(meter_id, now)))
                    deadlines[meter_id] = self._deadline(meter_id, now)
            await asyncio.sleep(period)

    def _deadline(self, meter_id: str, now: datetime) -> datetime:
        """The meter's next deadline; a state the core cannot place in time (a fault
        logged here) is asked again in an hour, never ending the clock for the others."""
        try:
            return next_deadline(self.meters[meter_id].state, now)
        except Exception:
            log.exception("meter %s: its next deadline could not be worked out", meter_id)
            return now + timedelta(hours=1)

    async def run_pollers(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for name, poller in self.pollers.items():
                tg.create_task(poller.run(), name=f"poll:{name}")

    async def close(self) -> None:
        await self.actions.close()
        for port in self.ports.values():
            with contextlib.suppress(Exception):
                await port.close()
