"""What the core knows about one meter (``MeterState``), how a meter starts (``enrol``), and
what follows from its state alone: when the shell must wake it, when its credit runs out."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time, timedelta

from gateway.core.forecast import SpendSample, exhaustion_time
from gateway.core.frozen import quick_init
from gateway.core.ledger import Ledger
from gateway.core.settings import MeterSettings
from gateway.core.states import RELAY_OPEN_STATES, CreditState, credit_level
from protocol.messages import RelayWord


@quick_init
@dataclass(frozen=True, slots=True)
class MeterState:
    """Everything the core knows about one meter; the store persists it whole."""

    meter_id: str
    settings: MeterSettings
    ledger: Ledger
    credit: CreditState = CreditState.NORMAL
    comm_ok: bool = True
    #: status flags raised at the last reading (events fire on the rising edge)
    flags: frozenset[str] = field(default_factory=frozenset)
    spend: tuple[SpendSample, ...] = ()
    relay_observed: bool | None = None
    #: a relay_mismatch event was published and the relay still disagrees
    relay_mismatch_reported: bool = False
    #: the last reading saw the relay open (consumption since then is bypass)
    open_at_last_reading: bool = False

    @property
    def relay_closed(self) -> bool:
        """Whether the core wants the supply on."""
        return self.credit not in RELAY_OPEN_STATES

    def relay_word(self) -> RelayWord:
        if self.credit == CreditState.RECONNECT_ARMED:
            return "armed"
        return "closed" if self.relay_closed else "open"


def enrol(
    meter_id: str,
    settings: MeterSettings,
    now: datetime,
    *,
    opening_balance: int = 0,
    opening_debt: int = 0,
    protected: bool = False,
) -> MeterState:
    """A newly enrolled meter: the standing charge starts the day after ``now``, the first
    reading is its baseline. A meter enrolled without credit starts exhausted but supplied;
    the first step decides whether to disconnect."""
    if opening_debt < 0:
        raise ValueError("opening_debt must be >= 0")
    today = now.astimezone(settings.tariffs.at(now).tz).date()
    ledger = Ledger(
        balance=opening_balance,
        debt=opening_debt,
        opening_balance=opening_balance,
        standing_paid_through=today,
    )
    credit = CreditState.PROTECTED if protected else credit_level(opening_balance, settings)
    return MeterState(meter_id, settings, ledger, credit)


def next_deadline(state: MeterState, now: datetime) -> datetime:
    """When the shell must send a ``ClockTick`` at the latest: the next local midnight, window
    edge or tariff activation."""
    tz = state.settings.tariffs.at(now).tz
    tomorrow = now.astimezone(tz).date() + timedelta(days=1)
    candidates = [datetime.combine(tomorrow, time(0), tzinfo=tz)]
    edge = state.settings.windows.next_edge(now)
    if edge is not None:
        candidates.append(edge)
    candidates += [
        e.activates_at
        for e in state.settings.tariffs.entries
        if e.activates_at is not None and e.activates_at > now
    ]
    return min(candidates)


def forecast(state: MeterState, now: datetime) -> datetime | None:
    """Expected time the meter will be exhausted (balance down to -overdraft limit)."""
    return exhaustion_time(
        state.spend,
        state.ledger.balance + state.settings.overdraft_limit,
        state.settings.tariffs.at(now).standing_charge_per_day,
        now,
    )
