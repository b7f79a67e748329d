"""The steady-reading fast path of ``step``: the common reading priced in integers and
built without the general step's walk, to the general step's result to the last field and
command (tests/unit/test_core_fast_path.py)."""

from __future__ import annotations

from datetime import datetime, timezone
from fractions import Fraction

from gateway.core.commands import Command, WriteDisplay
from gateway.core.events import ReadingReceived
from gateway.core.forecast import SpendSample, add_sample, exhaustion_time
from gateway.core.frozen import replacer
from gateway.core.ledger import Ledger, max_plausible_wh
from gateway.core.meter_state import MeterState
from gateway.core.money import round_ratio
from gateway.core.reports import DISPLAY_FOR_STATE, balance_report, reading_report
from gateway.core.states import RELAY_OPEN_STATES, CreditState, due_trigger
from gateway.core.tariff import steady_day

_NO_FLAGS: frozenset[str] = frozenset()
_CHARGED = replacer(Ledger, "balance", "register_wh", "read_at", "unbilled", "charged")
_READ = replacer(MeterState, "ledger", "flags", "spend", "relay_observed", "open_at_last_reading")


def steady_reading(
    state: MeterState, event: ReadingReceived, now: datetime
) -> tuple[MeterState, list[Command]] | None:
    """The general step's result for the common reading, or None to let it decide.

    Common means: one tariff in the schedule; the standing charge already taken for today;
    a normal register step inside one price segment of one steady local day; no flag,
    button or relay disagreement; and a balance for which no trigger is due before or
    after the charge (an exhausted meter, whose disconnection depends on windows and
    communication, never takes this path).
    """
    settings = state.settings
    entries = settings.tariffs.entries
    ledger = state.ledger
    start, end = ledger.read_at, event.read_at
    previous, current = ledger.register_wh, event.energy_import_wh
    credit = state.credit
    if (
        len(entries) != 1
        or start is None
        or previous is None
        or not start < end
        # wall-clock arithmetic on these is the absolute one (the interpolation's midpoint)
        or type(start.tzinfo) is not timezone
        or type(end.tzinfo) is not timezone
        or event.button_pressed
        or event.cover_open
        or event.magnetic_tamper
        or event.load_limit_tripped
        or event.reverse_energy
        or not previous <= current < 1 << settings.register_width_bits
        or credit == CreditState.EXHAUSTED
    ):
        return None
    observed = event.relay_closed
    relay_closed = credit not in RELAY_OPEN_STATES
    if observed is not None and (observed != relay_closed or state.relay_mismatch_reported):
        return None  # a disagreement to report, or the end of one
    if observed is False and state.open_at_last_reading:
        return None  # maybe a bypass to report
    tariff = entries[0].tariff
    today = steady_day(tariff, now)
    paid = ledger.standing_paid_through
    if today is None or paid is None or paid < today.day:
        return None
    energy_wh = current - previous
    elapsed = end - start
    if energy_wh > max_plausible_wh(
        settings.rated_power_w, elapsed, settings.plausibility_margin_percent
    ):
        return None
    segment = today.segment(start, end)
    balance = ledger.balance
    comm_ok = state.comm_ok
    if segment is None or due_trigger(credit, balance, settings, now, comm_ok) is not None:
        return None
    # Ledger.charge_cost in integers: exact = unbilled + energy * rate, rounded once.
    unbilled = ledger.unbilled
    denominator = unbilled.denominator * segment.rate_denominator
    exact = (
        unbilled.numerator * segment.rate_denominator
        + energy_wh * segment.rate_numerator * unbilled.denominator
    )
    charged = round_ratio(exact, denominator)
    balance -= charged
    if due_trigger(credit, balance, settings, now, comm_ok) is not None:
        return None
    new_ledger = _CHARGED(
        ledger,
        balance,
        current,
        end,
        Fraction(exact - charged * denominator, denominator),
        ledger.charged + charged,
    )
    after = _READ(
        state,
        new_ledger,
        _NO_FLAGS,
        add_sample(state.spend, SpendSample(end, new_ledger.charged)),
        state.relay_observed if observed is None else observed,
        observed is False,
    )
    meter = state.meter_id
    commands: list[Command] = [reading_report(meter, event, charged)]
    if charged:
        exhaustion = exhaustion_time(
            after.spend, balance + settings.overdraft_limit, tariff.standing_charge_per_day, now
        )
        commands.append(balance_report(after, tariff.currency, exhaustion))
        commands.append(WriteDisplay(meter, DISPLAY_FOR_STATE[credit], balance))
    return after, commands
