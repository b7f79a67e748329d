"""The gateway service: pollers and MQTT feed one queue; one core task decides; the store
commits; then the shell acts on meters and the outbox drains (DESIGN.md section 3).

The core task is the only writer of ledgers, token windows and lockouts, so it needs no
locks. It takes every item waiting in the queue, steps each through the pure core, and
commits the whole batch in one durable transaction before anything is done on a meter or
acknowledged to anyone: a crash loses or doubles nothing. The commit runs on the store's
writer thread, so pollers keep their lines busy while SQLite syncs.

Fault isolation: each item is stepped inside its own boundary (a failure is logged,
answered and counted; a meter that keeps failing is quarantined, the others go on); a
store that cannot commit (full disk, read-only, I/O error) puts the gateway in degraded
mode until a retry succeeds.
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
from gateway.core.driver import MeterState, event_body, forecast, next_deadline, step
from gateway.core.events import (
    ClockTick,
    CommunicationLost,
    CommunicationRestored,
    Event,
    PollFailed,
    ReadingReceived,
    RelayObserved,
)
from gateway.core.lease import lease_allowance_wh, lease_register_value
from gateway.meter_io import MeterIO, MeterSnapshot
from gateway.modbus_port import MeterIOError, ModbusPort, RtuPort, TcpPort
from gateway.poll_schedule import interval_for
from gateway.poller import BusPoller, PolledMeter
from gateway.store import (
    MeterRecord,
    MeterUpdate,
    StorageUnavailableError,
    Store,
    StoredMeter,
)
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
#: First and longest wait between attempts at a relay that does not follow its command.
RELAY_RETRY_FIRST_S = 1.0
RELAY_RETRY_CAP_S = 300.0
#: Items of one meter failing in a row before it is quarantined.
QUARANTINE_AFTER = 3
#: First and longest pause between commit attempts while the store cannot commit.
STORAGE_RETRY_S = 1.0
STORAGE_RETRY_MAX_S = 60.0
#: The PE-1 holding register of the credit lease, and the least drift that rewrites it.
LEASE_POINT = "credit_lease"
LEASE_SLACK_WH = 50
#: The lease's grace: this many normal poll intervals at the meter's rated power, so that
#: a gateway in touch always cuts first (it polls a meter near exhaustion more often).
LEASE_GRACE_POLLS = 3


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
    relay_desired: bool | None = None
    #: retries of a relay that disagrees with the command, and the earliest next one
    relay_retries: int = 0
    relay_retry_at: float = 0.0
    last_reading_at: datetime | None = None
    #: items of this meter that failed in a row; quarantined: no longer stepped or polled
    step_failures: int = 0
    quarantined: bool = False
    #: the credit lease last written (Wh; None: not known to the meter since start) and
    #: the energy register it was granted at
    lease_granted: int | None = None
    lease_base_wh: int = 0

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


def _fail(item: CoreItem, error: BaseException) -> None:
    if item.reply is not None and not item.reply.done():
        item.reply.set_exception(error)


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
    """What the gateway has done and met since it started (``health`` and the status file)."""

    readings: int = 0
    poll_failures: int = 0
    batches: int = 0
    steps: int = 0
    relay_faults: int = 0
    #: relay commands repeated because the relay disagreed
    relay_retries: int = 0
    #: items the core could not step, and meters quarantined for it
    step_errors: int = 0
    quarantined: int = 0
    #: commits the store refused for lack of storage, and items dropped meanwhile
    storage_failures: int = 0
    dropped_while_degraded: int = 0
    lease_grants: int = 0


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
    #: why the store cannot commit now (None: it can); told to ``on_storage`` on change
    storage_problem: str | None = None
    on_storage: Callable[[str | None], None] = lambda _problem: None
    _storage_attempts: int = field(default=0, init=False, repr=False)
    _storage_retry_at: float = field(default=0.0, init=False, repr=False)

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

    # ------------------------------------------------------------------ the core task

    async def submit(self, work: Event | KeypadEntry | OnlineTopUp) -> StepResult:
        """Queue one item and wait until what it led to is committed (raises
        :class:`StorageUnavailableError` when the store cannot commit it)."""
        fut: asyncio.Future[StepResult] = asyncio.get_running_loop().create_future()
        await self.queue.put(CoreItem(work, fut))
        return await fut

    async def run_core(self) -> None:
        """Gather, step, await the commit, act: one batch at a time, in that order."""
        while True:
            items = [await self.queue.get()]
            # Group commit: let a poll cycle's worth of items gather for a moment, so
            # one durable commit (one fsync) carries many readings.
            await asyncio.sleep(self.commit_window)
            while len(items) < MAX_BATCH:
                try:
                    items.append(self.queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            if self.storage_problem is not None and self.monotonic() < self._storage_retry_at:
                self._refuse_while_degraded(items)
                continue
            await self.process(items)

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

    async def process(self, items: Sequence[CoreItem]) -> None:
        """Step every item (each inside its own boundary), commit the batch in one
        transaction, then apply it and act on the meters. A meter whose items keep
        failing is quarantined; a store that cannot commit puts the gateway in degraded
        mode (the last committed state is enforced, nothing new is accepted)."""
        now = self.clock()
        tentative: dict[str, _Pending] = {}
        updates: list[MeterUpdate] = []
        actions: list[_Action] = []
        for item in items:
            rt = self.meters.get(item.work.meter_id)
            if rt is None or rt.quarantined:
                _fail(item, KeyError(item.work.meter_id))
                continue
            pending = tentative.get(rt.meter_id) or _Pending(rt.state, rt.window, rt.lockout)
            try:
                pending, update, commands, outcome = self._step_one(rt, item, pending, now)
            except Exception as exc:
                self._step_failed(rt, item, exc, now, updates)
                continue
            rt.step_failures = 0
            tentative[rt.meter_id] = pending
            updates.append(update)
            actions.append((rt, commands, item, outcome))
            self.counters.steps += 1
        if not updates:
            return
        try:
            await self.store.commit_cycle_async(updates, returning=False)
        except StorageUnavailableError as exc:
            self._storage_unavailable(exc)
            for _rt, _c, item, _o in actions:
                _fail(item, exc)
            return
        except Exception:
            # Not the disk: something in this batch the store cannot hold. Commit each
            # meter's part alone, so that only the meter at fault is held back.
            log.exception("commit of %d updates failed; committing meter by meter", len(updates))
            await self._commit_apart(updates, tentative, actions, now)
            return
        self._storage_ok()
        self._apply(tentative, actions, now)

    def _apply(
        self, tentative: dict[str, _Pending], actions: Sequence[_Action], now: datetime
    ) -> None:
        """A committed batch: its states become the meters' own, then the shell acts."""
        self.counters.batches += 1
        for meter_id, pending in tentative.items():
            rt = self.meters[meter_id]
            rt.state, rt.window, rt.lockout = pending.state, pending.window, pending.lockout
        self.on_commit()
        for rt, commands, item, outcome in actions:
            try:
                self._act(rt, commands, outcome)
                self._adapt_interval(rt, now)
            except Exception:
                log.exception("acting on meter %s failed", rt.meter_id)
            if item.reply is not None and not item.reply.done():
                decision = next((c for c in commands if isinstance(c, TopUpDecision)), None)
                final = outcome.with_decision(decision) if outcome is not None else None
                item.reply.set_result(StepResult(commands, final))

    async def _commit_apart(
        self,
        updates: Sequence[MeterUpdate],
        tentative: dict[str, _Pending],
        actions: Sequence[_Action],
        now: datetime,
    ) -> None:
        by_meter: dict[str, list[MeterUpdate]] = {}
        for update in updates:
            by_meter.setdefault(update.state.meter_id, []).append(update)
        for meter_id, own in by_meter.items():
            mine = [a for a in actions if a[0].meter_id == meter_id]
            try:
                await self.store.commit_cycle_async(own, returning=False)
            except StorageUnavailableError as exc:
                self._storage_unavailable(exc)
                for _rt, _c, item, _o in mine:
                    _fail(item, exc)
                continue
            except Exception as exc:
                rt = self.meters[meter_id]
                log.error("meter %s: its step could not be stored: %s", meter_id, exc)
                for _rt, _c, item, _o in mine:
                    _fail(item, exc)
                await self._quarantine(rt, f"its state could not be stored: {exc}", now)
                continue
            self._apply({meter_id: tentative[meter_id]}, mine, now)

    def _step_failed(
        self,
        rt: MeterRuntime,
        item: CoreItem,
        exc: Exception,
        now: datetime,
        updates: list[MeterUpdate],
    ) -> None:
        """An item the core could not step: logged with its context, answered, counted;
        the meter is quarantined when it keeps happening."""
        self.counters.step_errors += 1
        rt.step_failures += 1
        log.error(
            "meter %s: %s could not be stepped (%d in a row): %r",
            rt.meter_id,
            type(item.work).__name__,
            rt.step_failures,
            exc,
            exc_info=exc,
        )
        _fail(item, exc)
        if rt.step_failures >= QUARANTINE_AFTER:
            why = f"{rt.step_failures} events in a row failed: {type(exc).__name__}: {exc}"
            updates.append(self._quarantine_now(rt, why, now))

    def _quarantine_now(self, rt: MeterRuntime, why: str, now: datetime) -> MeterUpdate:
        """Stop stepping and polling a meter; its relay is left as it is. The update to
        commit carries the event that tells the headend."""
        rt.quarantined = True
        self.counters.quarantined += 1
        if rt.meter_id in rt.poller.meters:
            rt.poller.remove(rt.meter_id)
        log.error("meter %s quarantined (relay left as it is): %s", rt.meter_id, why)
        body = event_body("meter_quarantined", why[:500], relay=rt.state.relay_word())
        return MeterUpdate(rt.state, [Publish(rt.meter_id, "event", body)], now)

    async def _quarantine(self, rt: MeterRuntime, why: str, now: datetime) -> None:
        update = self._quarantine_now(rt, why, now)
        try:
            await self.store.commit_cycle_async([update], returning=False)
        except Exception as exc:
            log.error("meter %s: the quarantine event could not be stored: %s", rt.meter_id, exc)

    # ------------------------------------------------------------------ degraded storage

    def _storage_unavailable(self, exc: Exception) -> None:
        """The store cannot commit: keep enforcing the last committed state, accept
        nothing new, retry with a growing pause; one log line, no traceback."""
        self.counters.storage_failures += 1
        self._storage_attempts += 1
        pause = min(STORAGE_RETRY_MAX_S, STORAGE_RETRY_S * 2 ** min(self._storage_attempts, 8))
        self._storage_retry_at = self.monotonic() + pause
        if self.storage_problem is None:
            log.error(
                "store cannot commit (%s): enforcing the last committed state, refusing "
                "top-ups and commands, retrying",
                exc,
            )
            self.storage_problem = str(exc)
            self.on_storage(self.storage_problem)
        else:
            log.debug("store still cannot commit: %s (next try in %.0f s)", exc, pause)

    def _storage_ok(self) -> None:
        if self.storage_problem is None:
            return
        log.warning(
            "store writable again after %d failed commits: back to normal", self._storage_attempts
        )
        self.storage_problem = None
        self._storage_attempts = 0
        self.on_storage(None)

    def _refuse_while_degraded(self, items: Sequence[CoreItem]) -> None:
        """Between retries: answer waiters, drop the rest. Nothing is lost: an energy
        register is cumulative (the next committed reading charges what these carried)
        and an unacknowledged keypad entry stays pending on the meter."""
        error = StorageUnavailableError(self.storage_problem or "store unavailable")
        for item in items:
            _fail(item, error)
        self.counters.dropped_while_degraded += len(items)

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
        lease = self._lease_due(rt)
        if lease is not None:
            writes[LEASE_POINT] = lease
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
            self._command_relay(rt, relay)

    def _lease_due(self, rt: MeterRuntime) -> int | None:
        """The credit lease to write now, or None when the meter's holds well enough: it
        is rewritten when what the meter has left drifts from what the credit buys by
        more than an eighth (a top-up, a tariff change, a standing charge), not every poll."""
        if not rt.target.io.regmap.has(LEASE_POINT) or not rt.state.relay_closed:
            return None
        register = rt.state.ledger.register_wh
        if register is None:
            return None
        wanted = self._lease_value(rt)
        if rt.lease_granted is None:
            due = True
        elif wanted == 0 or rt.lease_granted == 0:
            due = wanted != rt.lease_granted
        else:
            left = rt.lease_granted - (register - rt.lease_base_wh)
            due = abs(wanted - left) > max(wanted // 8, LEASE_SLACK_WH)
        if not due:
            return None
        rt.lease_granted, rt.lease_base_wh = wanted, register
        self.counters.lease_grants += 1
        return wanted

    def _lease_value(self, rt: MeterRuntime) -> int:
        """The lease register's value for this meter now (gateway seconds of grace)."""
        grace = LEASE_GRACE_POLLS * self.config.polling.interval_s  # real seconds
        allowance = lease_allowance_wh(rt.state, self.clock(), grace * self.speed)
        return lease_register_value(allowance)

    def _command_relay(self, rt: MeterRuntime, relay: SetRelay) -> None:
        """Drive the relay where the core wants it. A retry after a disagreement waits
        for its backoff (doubling up to RELAY_RETRY_CAP_S): the core asks again at every
        disagreeing reading, and this is where that is paced."""
        running = rt.relay_task is not None and not rt.relay_task.done()
        if running and rt.relay_desired is relay.closed:
            return  # already being driven there
        if relay.retry:
            if running or self.monotonic() < rt.relay_retry_at:
                return
            rt.relay_retries += 1
            self.counters.relay_retries += 1
            pause = min(RELAY_RETRY_CAP_S, RELAY_RETRY_FIRST_S * 2 ** min(rt.relay_retries, 16))
            rt.relay_retry_at = self.monotonic() + pause
        else:
            rt.relay_retries = 0
            rt.relay_retry_at = 0.0
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
                if LEASE_POINT in writes:
                    rt.lease_granted = None  # not known to have arrived: grant again
                log.warning("write to %s failed: %s (retried at the next poll)", rt.meter_id, exc)
            except Exception:
                rt.lease_granted = None
                log.exception("write to %s failed", rt.meter_id)

    async def _drive_relay(self, rt: MeterRuntime, closed: bool) -> None:
        try:
            if closed and rt.target.io.regmap.has(LEASE_POINT):
                # A meter whose lease ran out would open again at once: grant first.
                lease = self._lease_value(rt)
                with contextlib.suppress(MeterIOError):
                    await rt.target.io.write_points(
                        rt.target.port, rt.target.unit, {LEASE_POINT: lease}
                    )
                    register = rt.state.ledger.register_wh
                    rt.lease_granted, rt.lease_base_wh = lease, register or 0
            outcome = await drive_relay(
                rt.target, closed, attempts=self.relay_attempts, first_delay=self.relay_first_delay
            )
            if not outcome.ok:
                self.counters.relay_faults += 1
                log.error("relay fault on %s: %s", rt.meter_id, outcome.error)
            if outcome.observed is not None and not rt.target.io.status_reports_relay:
                # Only the coil tells this meter's relay position: what it read back goes
                # to the core (a disagreement becomes a relay_mismatch event and a retry).
                # A meter whose status register reports its contacts is judged by that,
                # at the reading asked for below: one source, so no flapping between two.
                await self.queue.put(
                    CoreItem(RelayObserved(rt.meter_id, outcome.observed, self.clock()))
                )
        except Exception:
            log.exception("driving the relay of %s failed", rt.meter_id)
        # Read the meter again soon: the reading reports the relay as the meter sees it.
        if rt.meter_id in rt.poller.meters:
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
        for rt in self.meters.values():
            for task in (rt.relay_task, rt.write_task):
                if task is not None:
                    task.cancel()
        for port in self.ports.values():
            with contextlib.suppress(Exception):
                await port.close()
