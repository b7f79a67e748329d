"""The core task: the one writer of ledgers, token windows and lockouts.

It takes every item waiting in its queue (readings, poll failures, keypad entries, online
top-ups, headend commands, clock ticks), steps each through the pure core, commits the
whole batch in one durable transaction, and only then lets the shell act on meters and
answers whoever waits: gather, step, await the commit, act, in that order. A crash loses
or doubles nothing; the commit runs on the store's writer thread, so pollers keep their
lines busy while SQLite syncs.

Fault isolation: each item is stepped inside its own boundary (a failure is logged,
answered and counted; a meter that keeps failing is quarantined, the others go on); a
store that cannot commit (full disk, read-only, I/O error) puts the gateway in degraded
mode, enforcing the last committed state, until a retry succeeds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from gateway.config import TokenSettings
from gateway.core.commands import Command, TopUpDecision
from gateway.core.events import Event
from gateway.core.reports import event_report
from gateway.core.step import step
from gateway.core.token_intake import (
    KeypadEntry,
    MeterAbilities,
    OnlineTopUp,
    TokenOutcome,
    intake_keypad,
)
from gateway.load_limit import largest_load_limit_w
from gateway.runtime import (
    Action,
    CoreItem,
    Counters,
    MeterRuntime,
    Pending,
    StepResult,
    fail,
    utc_now,
)
from gateway.store import MeterUpdate, StorageUnavailableError, Store
from gateway.token_intake import intake_online
from protocol.event_kinds import EventKind

log = logging.getLogger(__name__)

#: Most queue items stepped and committed in one transaction.
MAX_BATCH = 512
#: Most items waiting for the core: past it pollers wait (the core sets the pace, and
#: memory stays bounded when the bus outruns the core).
QUEUE_LIMIT = 4 * MAX_BATCH
#: Items of one meter failing in a row before it is quarantined.
QUARANTINE_AFTER = 3
#: First and longest pause between commit attempts while the store cannot commit.
STORAGE_RETRY_S = 1.0
STORAGE_RETRY_MAX_S = 60.0

#: after a committed step: act on the meter (relay, display, lease...) and re-plan its poll
ActOnMeter = Callable[[MeterRuntime, list[Command], TokenOutcome | None, datetime], None]


@dataclass
class CoreTask:
    """Steps and commits the queue's items; :meth:`run` until cancelled."""

    store: Store
    tokens: TokenSettings
    meters: dict[str, MeterRuntime]
    counters: Counters
    act: ActOnMeter
    clock: Callable[[], datetime] = utc_now
    monotonic: Callable[[], float] = time.monotonic
    queue: asyncio.Queue[CoreItem] = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))
    on_commit: Callable[[], None] = lambda: None
    #: how long items gather before one commit (adds at most this latency)
    commit_window: float = 0.01
    #: why the store cannot commit now (None: it can); told to ``on_storage`` on change
    storage_problem: str | None = None
    on_storage: Callable[[str | None], None] = lambda _problem: None
    _storage_attempts: int = field(default=0, init=False, repr=False)
    _storage_retry_at: float = field(default=0.0, init=False, repr=False)

    async def submit(self, work: Event | KeypadEntry | OnlineTopUp) -> StepResult:
        """Queue one item and wait until what it led to is committed (raises
        :class:`StorageUnavailableError` when the store cannot commit it)."""
        fut: asyncio.Future[StepResult] = asyncio.get_running_loop().create_future()
        await self.queue.put(CoreItem(work, fut))
        return await fut

    async def run(self) -> None:
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
            await self.step_and_commit(items)

    def _verify(
        self, rt: MeterRuntime, work: KeypadEntry | OnlineTopUp, pending: Pending, now: datetime
    ) -> TokenOutcome:
        currency = pending.state.settings.tariffs.at(now).currency
        abilities = MeterAbilities(
            frozenset(rt.next_keys), largest_load_limit_w(rt.target.io.regmap)
        )
        if isinstance(work, KeypadEntry):
            key = rt.key_for(pending.window.epoch)
            return intake_keypad(work, key, pending.window, pending.lockout, currency, abilities)
        return intake_online(
            work,
            self.tokens,
            window=pending.window,
            currency=currency,
            now=now,
            lockout=pending.lockout,
            abilities=abilities,
        )

    def _step_one(
        self, rt: MeterRuntime, item: CoreItem, pending: Pending, now: datetime
    ) -> tuple[Pending, MeterUpdate, list[Command], TokenOutcome | None]:
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
        key_epoch = None
        if (
            outcome is not None
            and outcome.window is not None
            and any(isinstance(c, TopUpDecision) and c.accepted for c in commands)
        ):
            # The counter is used only when the money was credited: a top-up refused
            # over the maximum balance can be entered again later.
            window = outcome.window
            # A key change: the meter's key moves to the new epoch in this transaction.
            key_epoch = outcome.key_epoch
        lockout = pending.lockout
        if outcome is not None and outcome.lockout is not None:
            lockout = outcome.lockout
        update = MeterUpdate(
            state,
            commands,
            now,
            token_window=window if window is not pending.window else None,
            lockout=lockout.to_dict() if lockout is not pending.lockout else None,
            key_epoch=key_epoch,
        )
        return Pending(state, window, lockout), update, commands, outcome

    async def step_and_commit(self, items: Sequence[CoreItem]) -> None:
        """Step every item (each inside its own boundary), commit the batch in one
        transaction, then apply it and act on the meters. A meter whose items keep
        failing is quarantined; a store that cannot commit puts the gateway in degraded
        mode (the last committed state is enforced, nothing new is accepted)."""
        now = self.clock()
        tentative: dict[str, Pending] = {}
        updates: list[MeterUpdate] = []
        actions: list[Action] = []
        for item in items:
            rt = self.meters.get(item.work.meter_id)
            if rt is None or rt.quarantined:
                fail(item, KeyError(item.work.meter_id))
                continue
            pending = tentative.get(rt.meter_id) or Pending(rt.state, rt.window, rt.lockout)
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
                fail(item, exc)
            return
        except Exception:
            # Not the disk: something in this batch the store cannot hold. Commit each
            # meter's part alone, so that only the meter at fault is held back.
            log.exception("commit of %d updates failed; committing meter by meter", len(updates))
            await self._commit_apart(updates, tentative, actions, now)
            return
        self._storage_ok()
        self._adopt_committed(tentative, actions, now)

    def _adopt_committed(
        self, tentative: dict[str, Pending], actions: Sequence[Action], now: datetime
    ) -> None:
        """A committed batch: its states become the meters' own, then the shell acts."""
        self.counters.batches += 1
        for meter_id, pending in tentative.items():
            rt = self.meters[meter_id]
            if pending.window.epoch != rt.window.epoch:
                rt.adopt_key(pending.window.epoch)
            rt.state, rt.window, rt.lockout = pending.state, pending.window, pending.lockout
        self.on_commit()
        for rt, commands, item, outcome in actions:
            try:
                self.act(rt, commands, outcome, now)
            except Exception:
                log.exception("acting on meter %s failed", rt.meter_id)
            if item.reply is not None and not item.reply.done():
                decision = next((c for c in commands if isinstance(c, TopUpDecision)), None)
                final = outcome.with_decision(decision) if outcome is not None else None
                item.reply.set_result(StepResult(commands, final))

    async def _commit_apart(
        self,
        updates: Sequence[MeterUpdate],
        tentative: dict[str, Pending],
        actions: Sequence[Action],
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
                    fail(item, exc)
                continue
            except Exception as exc:
                rt = self.meters[meter_id]
                log.error("meter %s: its step could not be stored: %s", meter_id, exc)
                for _rt, _c, item, _o in mine:
                    fail(item, exc)
                await self._quarantine(rt, f"its state could not be stored: {exc}", now)
                continue
            self._adopt_committed({meter_id: tentative[meter_id]}, mine, now)

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
        fail(item, exc)
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
        report = event_report(
            rt.meter_id, EventKind.METER_QUARANTINED, why[:500], relay=rt.state.relay_word()
        )
        return MeterUpdate(rt.state, [report], now)

    async def _quarantine(self, rt: MeterRuntime, why: str, now: datetime) -> None:
        update = self._quarantine_now(rt, why, now)
        try:
            await self.store.commit_cycle_async([update], returning=False)
        except Exception as exc:
            log.error("meter %s: the quarantine event could not be stored: %s", rt.meter_id, exc)

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
            fail(item, error)
        self.counters.dropped_while_degraded += len(items)
