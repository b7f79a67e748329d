"""Acting on meters after a committed step: relays as desired versus observed (retries
paced by a doubling backoff), display, alarm and keypad-acknowledgement writes coalesced
per meter, and the credit lease (PE-1) granted when it drifts from what the credit buys.

Writes go through the bus's port, so on RTU they take their turn on the wire between
polls. Nothing here decides anything about money: the core did, and it is committed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.actuator import drive_relay
from gateway.core.commands import (
    Command,
    Publish,
    SetAlarm,
    SetLoadLimit,
    SetRelay,
    TopUpDecision,
    WriteDisplay,
)
from gateway.core.events import RelayObserved
from gateway.core.lease import lease_allowance_wh, lease_register_value
from gateway.core.token_intake import TokenOutcome
from gateway.load_limit import write_load_limit
from gateway.modbus_port import MeterIOError
from gateway.owned_tasks import OwnedTasks
from gateway.runtime import CoreItem, Counters, MeterRuntime, utc_now

log = logging.getLogger(__name__)

#: First and longest wait between attempts at a relay that does not follow its command.
RELAY_RETRY_FIRST_S = 1.0
RELAY_RETRY_CAP_S = 300.0
#: The PE-1 holding register of the credit lease, and the least drift that rewrites it.
LEASE_POINT = "credit_lease"
LEASE_SLACK_WH = 50
#: The lease's grace: this many normal poll intervals at the meter's rated power, so that
#: a gateway in touch always cuts first (it polls a meter near exhaustion more often).
LEASE_GRACE_POLLS = 3


@dataclass
class MeterActions:
    """Carries out committed steps on the meters."""

    counters: Counters
    #: puts an item on the core task's queue (a relay position read back)
    enqueue: Callable[[CoreItem], Awaitable[None]]
    #: the normal poll interval (real seconds): the lease's grace is counted in them
    poll_interval_s: float
    clock: Callable[[], datetime] = utc_now
    monotonic: Callable[[], float] = time.monotonic
    #: gateway seconds per real second (an accelerated clock for demos and tests)
    speed: float = 1.0
    relay_attempts: int = 4
    relay_first_delay: float = 0.2
    #: the per-meter writes and relay drives running now: this object owns them
    _tasks: OwnedTasks = field(default_factory=OwnedTasks, init=False, repr=False)

    async def close(self) -> None:
        """Stop every write and relay drive and wait until they have: a commit already
        made is done again from the state at the next start (a relay read back, a
        display rewritten), so nothing is lost by stopping them halfway."""
        await self._tasks.cancel_all()

    def carry_out(
        self, rt: MeterRuntime, commands: list[Command], outcome: TokenOutcome | None
    ) -> None:
        """What a committed step asked of the meter: relay, display, alarm, keypad
        acknowledgement, and the credit lease when it is due."""
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
                case SetLoadLimit(watts=watts):
                    self._tasks.spawn(self._set_load_limit(rt, watts), f"load-limit:{rt.meter_id}")
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
                rt.write_task = self._tasks.spawn(self._write_meter(rt), f"write:{rt.meter_id}")
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
        grace = LEASE_GRACE_POLLS * self.poll_interval_s  # real seconds
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
        rt.relay_task = self._tasks.spawn(
            self._drive_relay(rt, relay.closed), f"relay:{rt.meter_id}"
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

    async def _set_load_limit(self, rt: MeterRuntime, watts: int) -> None:
        """Write the load limit, read it back, tell the core what the meter holds."""
        observed = await write_load_limit(rt.target, watts, self.clock())
        await self.enqueue(CoreItem(observed))

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
                await self.enqueue(
                    CoreItem(RelayObserved(rt.meter_id, outcome.observed, self.clock()))
                )
        except Exception:
            log.exception("driving the relay of %s failed", rt.meter_id)
        # Read the meter again soon: the reading reports the relay as the meter sees it.
        if rt.meter_id in rt.poller.meters:
            rt.poller.poll_now(rt.meter_id)
