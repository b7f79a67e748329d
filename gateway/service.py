"""The gateway service: pollers and MQTT feed one queue; one core task decides; the store
commits; then the shell acts on meters and the outbox drains (DESIGN.md section 3).

The core task is the only writer of ledgers, token windows and lockouts, so it needs no
locks. It takes every item waiting in the queue, steps each through the pure core, and
commits the whole batch in one durable transaction before anything is done on a meter or
acknowledged to anyone: a crash loses or doubles nothing. The commit runs on the store's
writer thread, so pollers keep their lines busy while SQLite syncs; batches commit
strictly in order, and the next batch may be stepped (on the states in flight) meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.actuator import MeterTarget, RelayTarget, drive_relay, parse_relay_output
from gateway.config import GatewayConfig, RtuBus, TcpBus
from gateway.core.commands import (
    Command,
    Publish,
    SetAlarm,
    SetRelay,
    TopUpDecision,
    WriteDisplay,
)
from gateway.core.driver import MeterState, forecast, next_deadline, step
from gateway.core.events import (
    ClockTick,
    CommunicationLost,
    CommunicationRestored,
    Event,
    PollFailed,
    ReadingReceived,
    RelayObserved,
)
from gateway.meter_io import MeterIO, MeterSnapshot
from gateway.modbus_port import MeterIOError, ModbusPort, RtuPort, TcpPort
from gateway.poll_schedule import interval_for
from gateway.poller import BusPoller, PolledMeter
from gateway.store import MeterRecord, MeterUpdate, Store, StoredMeter, StoreError
from gateway.token_intake import (
    KeypadEntry,
    LockoutState,
    OnlineTopUp,
    TokenOutcome,
    intake_keypad,
    intake_online,
)
from protocol.regmap import load_map
from protocol.tokens.keys import MeterKey
from protocol.tokens.replay import ReplayWindow

log = logging.getLogger(__name__)

#: Consecutive failed polls before a meter is reported as not communicating.
COMM_LOST_AFTER = 3
#: Most queue items stepped and committed in one transaction.
MAX_BATCH = 512
#: Most items waiting for the core: past it pollers wait (the core sets the pace, and
#: memory stays bounded when the bus outruns the core).
QUEUE_LIMIT = 4 * MAX_BATCH
#: Longest wait between attempts at a relay that does not follow its command.
RELAY_RETRY_CAP_S = 300.0


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class MeterRuntime:
    """Everything the shell holds for one meter between steps."""

    stored: StoredMeter
    state: MeterState
    window: ReplayWindow
    lockout: LockoutState
    target: MeterTarget
    polled: PolledMeter
    poller: BusPoller
    key: MeterKey
    relay_task: asyncio.Task[None] | None = None
    #: the one task writing display/alarm/keypad ack to this meter, and what it writes next
    write_task: asyncio.Task[None] | None = None
    pending_writes: dict[str, Any] = field(default_factory=dict)
    pending_ack: int | None = None
    relay_failures: int = 0
    relay_desired: bool | None = None
    last_snapshot: MeterSnapshot | None = None
    last_reading_at: datetime | None = None

    @property
    def meter_id(self) -> str:
        return self.state.meter_id


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one queue item came to, once committed: for whoever waits on it."""

    commands: list[Command]
    outcome: TokenOutcome | None = None


@dataclass(frozen=True, slots=True)
class CoreItem:
    """One thing for the core task: a core event, or a token to verify first."""

    work: Event | KeypadEntry | OnlineTopUp
    reply: asyncio.Future[StepResult] | None = None


@dataclass(frozen=True, slots=True)
class _Pending:
    """A meter's state as the batch being stepped leaves it (not yet committed)."""

    state: MeterState
    window: ReplayWindow
    lockout: LockoutState


#: one stepped item, to act on once its batch is committed
_Action = tuple[MeterRuntime, list[Command], CoreItem, TokenOutcome | None]


@dataclass
class Counters:
    readings: int = 0
    poll_failures: int = 0
    batches: int = 0
    steps: int = 0
    relay_faults: int = 0


@dataclass
class Gateway:
    """The long-running service; :meth:`run` until cancelled."""

    config: GatewayConfig
    store: Store
    clock: Callable[[], datetime] = utc_now
    monotonic: Callable[[], float] = time.monotonic
    queue: asyncio.Queue[CoreItem] = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))
    meters: dict[str, MeterRuntime] = field(default_factory=dict)
    pollers: dict[str, BusPoller] = field(default_factory=dict)
    ports: dict[str, ModbusPort] = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)
    on_commit: Callable[[], None] = lambda: None
    relay_attempts: int = 4
    #: how long the core lets items gather before one commit (adds at most this latency)
    commit_window: float = 0.01
    #: gateway seconds per real second (an accelerated clock for demos and tests)
    speed: float = 1.0
    relay_first_delay: float = 0.2
    #: the latest batch's commit-then-act task (the next one waits for it)
    _committing: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    #: meter -> state stepped in a batch whose commit has not returned yet
    _uncommitted: dict[str, _Pending] = field(default_factory=dict, init=False, repr=False)

    # ------------------------------------------------------------------ setup

    def _port_for(self, bus: RtuBus | TcpBus) -> ModbusPort:
        if isinstance(bus, TcpBus):
            return TcpPort(
                bus.name, bus.host, bus.port, concurrency=bus.concurrency, timeout=bus.timeout_s
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
                lockout=LockoutState.from_stored(stored.lockout),
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
        rt.last_snapshot = snap
        rt.last_reading_at = now
        if not rt.state.comm_ok:
            await self.queue.put(CoreItem(CommunicationRestored(rt.meter_id, now)))
        flags = snap.flags
        relay = snap.relay_closed
        if rt.relay_task is not None and not rt.relay_task.done():
            relay = None  # being switched right now: this reading cannot tell
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
        await self.queue.put(CoreItem(PollFailed(rt.meter_id, str(error), now)))
        if polled.consecutive_failures == COMM_LOST_AFTER:
            await self.queue.put(CoreItem(CommunicationLost(rt.meter_id, now, error.kind.value)))

    # ------------------------------------------------------------------ the core task

    async def submit(self, work: Event | KeypadEntry | OnlineTopUp) -> StepResult:
        """Queue one item and wait until what it led to is committed."""
        fut: asyncio.Future[StepResult] = asyncio.get_running_loop().create_future()
        await self.queue.put(CoreItem(work, fut))
        return await fut

    async def run_core(self) -> None:
        inflight: asyncio.Task[None] | None = None  # the batch being committed
        try:
            while True:
                if inflight is not None and self.queue.empty():
                    await inflight  # nothing to step meanwhile; raises if the commit failed
                    inflight = None
                items = [await self.queue.get()]
                # Group commit: let a poll cycle's worth of items gather for a moment, so
                # one durable commit (one fsync) carries many readings.
                await asyncio.sleep(self.commit_window)
                while len(items) < MAX_BATCH:
                    try:
                        items.append(self.queue.get_nowait())
                    except asyncio.QueueEmpty:
                        break
                self.process(items)  # steps now; its commit waits for ``inflight``'s
                if inflight is not None:
                    await inflight  # at most one batch waits behind the one committing
                inflight = self._committing
        finally:
            # A commit already started still completes on the writer thread (never cut in
            # half); what it would have done on meters is left to the next start.
            if self._committing is not None:
                self._committing.cancel()

    def _verify(
        self, rt: MeterRuntime, work: KeypadEntry | OnlineTopUp, pending: _Pending, now: datetime
    ) -> TokenOutcome:
        currency = pending.state.settings.tariffs.at(now).currency
        if isinstance(work, KeypadEntry):
            return intake_keypad(work, rt.key, pending.window, pending.lockout, currency)
        return intake_online(
            work,
            self.config.tokens,
            window=pending.window,
            currency=currency,
            now=now,
            lockout=pending.lockout,
        )

    def _step_one(
        self, rt: MeterRuntime, item: CoreItem, pending: _Pending, now: datetime
    ) -> tuple[_Pending, MeterUpdate, list[Command], TokenOutcome | None]:
        """One item through token intake and the core; nothing is committed here."""
        work = item.work
        outcome = None
        if isinstance(work, KeypadEntry | OnlineTopUp):
            outcome = self._verify(rt, work, pending, now)
            event = outcome.event
        else:
            event = work
        commands: list[Command] = []
        state = pending.state
        if event is not None:  # None: a keypad entry already consumed, only to acknowledge
            state, commands = step(state, event, now)
        window = pending.window
        if (
            outcome is not None
            and outcome.window is not None
            and any(isinstance(c, TopUpDecision) and c.accepted for c in commands)
        ):
            # The counter is used only when the money was credited: a top-up refused
            # over the maximum balance can be entered again later.
            window = outcome.window
        lockout = pending.lockout
        if outcome is not None and outcome.lockout is not None:
            lockout = outcome.lockout
        update = MeterUpdate(
            state,
            commands,
            now,
            token_window=window if window is not pending.window else None,
            lockout=lockout.to_dict() if lockout is not pending.lockout else None,
        )
        return _Pending(state, window, lockout), update, commands, outcome

    def process(self, items: Sequence[CoreItem]) -> None:
        """Step every item and queue the batch's commit behind the previous batch's; the
        batch is acted on once its own commit has returned (see ``_commit_and_act``)."""
        now = self.clock()
        tentative: dict[str, _Pending] = {}
        updates: list[MeterUpdate] = []
        actions: list[_Action] = []
        for item in items:
            rt = self.meters.get(item.work.meter_id)
            if rt is None:
                if item.reply is not None and not item.reply.done():
                    item.reply.set_exception(KeyError(item.work.meter_id))
                continue
            pending = (
                tentative.get(rt.meter_id)
                or self._uncommitted.get(rt.meter_id)
                or _Pending(rt.state, rt.window, rt.lockout)
            )
            pending, update, commands, outcome = self._step_one(rt, item, pending, now)
            tentative[rt.meter_id] = pending
            updates.append(update)
            actions.append((rt, commands, item, outcome))
            self.counters.steps += 1
        if not updates:
            return
        self._uncommitted.update(tentative)
        self._committing = asyncio.get_running_loop().create_task(
            self._commit_and_act(self._committing, updates, tentative, actions, now),
            name="commit",
        )

    async def _commit_and_act(
        self,
        previous: asyncio.Task[None] | None,
        updates: list[MeterUpdate],
        tentative: dict[str, _Pending],
        actions: list[_Action],
        now: datetime,
    ) -> None:
        """Commit one stepped batch after the previous one, then apply and act on it."""
        try:
            if previous is not None:
                await asyncio.wait([previous])
                if previous.cancelled() or previous.exception() is not None:
                    # Stepped on states that never committed: this batch must not either.
                    raise StoreError("the previous batch was not committed")
            await self.store.commit_cycle_async(updates, returning=False)
        except StoreError:
            log.exception("commit of %d updates failed; nothing applied", len(updates))
            self._fail(actions, RuntimeError("store refused the commit"))
            raise
        except asyncio.CancelledError:
            self._fail(actions, RuntimeError("the gateway stopped"))
            raise
        self.counters.batches += 1
        for meter_id, pending in tentative.items():
            rt = self.meters[meter_id]
            rt.state, rt.window, rt.lockout = pending.state, pending.window, pending.lockout
            if self._uncommitted.get(meter_id) is pending:
                del self._uncommitted[meter_id]
        self.on_commit()
        for rt, commands, item, outcome in actions:
            self._act(rt, commands, outcome)
            if item.reply is not None and not item.reply.done():
                decision = next((c for c in commands if isinstance(c, TopUpDecision)), None)
                final = outcome.with_decision(decision) if outcome is not None else None
                item.reply.set_result(StepResult(commands, final))
            self._adapt_interval(rt, now)

    @staticmethod
    def _fail(actions: list[_Action], error: Exception) -> None:
        for _rt, _c, item, _o in actions:
            if item.reply is not None and not item.reply.done():
                item.reply.set_exception(error)

    # ------------------------------------------------------------------ acting on meters

    def _act(self, rt: MeterRuntime, commands: list[Command], outcome: TokenOutcome | None) -> None:
        writes: dict[str, Any] = {}
        relay: SetRelay | None = None
        for cmd in commands:
            match cmd:
                case SetRelay():
                    relay = cmd
                case WriteDisplay(code=code, credit=credit):
                    if rt.target.io.regmap.has("display_code"):
                        writes["display_code"] = int(code)
                        writes["display_credit"] = max(-(2**31), min(2**31 - 1, credit))
                case SetAlarm(on=on):
                    if rt.target.io.regmap.has("alarm"):
                        writes["alarm"] = int(on)
                case Publish() | TopUpDecision():
                    pass
        ack = outcome.ack_keypad_seq if outcome is not None else None
        if writes or ack is not None:
            # Coalesced: at most one write in flight per meter, the latest values win, so a
            # slow or busy meter never piles up writes (or tasks) behind it.
            rt.pending_writes.update(writes)
            if ack is not None:
                rt.pending_ack = ack
            if rt.write_task is None or rt.write_task.done():
                rt.write_task = asyncio.get_running_loop().create_task(
                    self._write_meter(rt), name=f"write:{rt.meter_id}"
                )
        if relay is not None:
            running = rt.relay_task is not None and not rt.relay_task.done()
            if running and rt.relay_desired is relay.closed:
                return  # already being driven there (with its retries and backoff)
            if running and rt.relay_task is not None:
                rt.relay_task.cancel()
            rt.relay_desired = relay.closed
            rt.relay_task = asyncio.get_running_loop().create_task(
                self._drive_relay(rt, relay.closed), name=f"relay:{rt.meter_id}"
            )

    async def _write_meter(self, rt: MeterRuntime) -> None:
        """Write what is pending until nothing is: display first (the customer sees the
        result), then acknowledge the keypad entry. A failed write is dropped; the next
        step that changes the display, or the keypad entry seen again, writes anew."""
        while rt.pending_writes or rt.pending_ack is not None:
            writes, ack = rt.pending_writes, rt.pending_ack
            rt.pending_writes, rt.pending_ack = {}, None
            try:
                if writes:
                    await rt.target.io.write_points(rt.target.port, rt.target.unit, writes)
                if ack is not None:
                    await rt.target.io.write_points(
                        rt.target.port, rt.target.unit, {"keypad_ack": ack}
                    )
            except MeterIOError as exc:
                log.warning("write to %s failed: %s (retried at the next poll)", rt.meter_id, exc)

    async def _drive_relay(self, rt: MeterRuntime, closed: bool) -> None:
        if rt.relay_failures:
            # The relay refused before: keep trying, less and less often.
            await asyncio.sleep(min(RELAY_RETRY_CAP_S, 2.0**rt.relay_failures))
        outcome = await drive_relay(
            rt.target, closed, attempts=self.relay_attempts, first_delay=self.relay_first_delay
        )
        if outcome.ok:
            rt.relay_failures = 0
        else:
            rt.relay_failures += 1
            self.counters.relay_faults += 1
            log.error("relay fault on %s: %s", rt.meter_id, outcome.error)
        if outcome.observed is not None:
            # What the relay really did goes to the core: a disagreement becomes a
            # relay_mismatch event (the relay fault, with desired and observed) and a
            # new command, which comes back here after the delay above.
            await self.queue.put(
                CoreItem(RelayObserved(rt.meter_id, outcome.observed, self.clock()))
            )
        # Read the meter again soon: the reading reports the relay as the meter sees it.
        rt.poller.poll_now(rt.meter_id)

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
        deadlines = {m: next_deadline(rt.state, self.clock()) for m, rt in self.meters.items()}
        while True:
            await asyncio.sleep(period)
            now = self.clock()
            for meter_id in self.meters.keys() - deadlines.keys():  # added by a reload
                deadlines[meter_id] = next_deadline(self.meters[meter_id].state, now)
            for meter_id, due in list(deadlines.items()):
                if due <= now:
                    await self.queue.put(CoreItem(ClockTick(meter_id, now)))
                    deadlines[meter_id] = next_deadline(self.meters[meter_id].state, now)

    async def run_pollers(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for name, poller in self.pollers.items():
                tg.create_task(poller.run(), name=f"poll:{name}")

    async def close(self) -> None:
        for rt in self.meters.values():
            for task in (rt.relay_task, rt.write_task):
                if task is not None:
                    task.cancel()
        for port in self.ports.values():
            with contextlib.suppress(Exception):
                await port.close()
