"""What the gateway's shell holds between steps: each meter's runtime, the items of the core
task's queue and what they come to, and the counters the health reports."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.actuator import MeterTarget
from gateway.core.commands import Command
from gateway.core.events import Event
from gateway.core.meter_state import MeterState
from gateway.core.token_intake import KeypadEntry, KeypadGuard, OnlineTopUp, TokenOutcome
from gateway.poller import BusPoller, PolledMeter
from gateway.store import StoredMeter
from protocol.tokens.keys import MeterKey
from protocol.tokens.replay import ReplayWindow


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class MeterRuntime:
    """Everything the shell holds for one meter between steps."""

    stored: StoredMeter
    state: MeterState
    window: ReplayWindow
    lockout: KeypadGuard
    target: MeterTarget
    polled: PolledMeter
    poller: BusPoller
    key: MeterKey
    #: keys of later epochs, installed ahead of a key change (``meter-provision keys install``)
    next_keys: dict[int, MeterKey] = field(default_factory=dict)
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

    def key_for(self, epoch: int) -> MeterKey:
        """The key tokens of ``epoch`` are checked with: the current one, or a later one
        a key change in the batch being stepped moved to."""
        return self.next_keys.get(epoch, self.key)

    def adopt_key(self, epoch: int) -> None:
        """A committed key change: the key of ``epoch`` is the meter's key from now on,
        and the keys of the epochs it passed are dropped."""
        self.key = self.next_keys[epoch]
        self.next_keys = {e: k for e, k in self.next_keys.items() if e > epoch}


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


def fail(item: CoreItem, error: BaseException) -> None:
    """Tell whoever waits on ``item`` that it came to nothing."""
    if item.reply is not None and not item.reply.done():
        item.reply.set_exception(error)


@dataclass(frozen=True, slots=True)
class Pending:
    """A meter's state as the batch being stepped leaves it (not yet committed)."""

    state: MeterState
    window: ReplayWindow
    lockout: KeypadGuard


#: one stepped item, to act on once its batch is committed
Action = tuple[MeterRuntime, list[Command], CoreItem, TokenOutcome | None]


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
