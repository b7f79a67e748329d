"""The steady-reading fast path of ``step``: the common reading priced in integers and
built without the general step's walk, to the general step's result to the last field and
command (tests/unit/test_core_fast_path.py). A steady day (one local day of one tariff,
with one UTC offset all day, cut at its price boundaries) prices it without
``price_consumption``'s general walk, to the same exact cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from fractions import Fraction
from functools import lru_cache

from gateway.core.commands import Command, WriteDisplay
from gateway.core.events import ReadingReceived
from gateway.core.forecast import SpendSample, add_sample, exhaustion_time
from gateway.core.frozen import replacer
from gateway.core.ledger import Ledger, max_plausible_wh
from gateway.core.meter_state import MeterState
from gateway.core.money import energy_cost, round_ratio
from gateway.core.reports import DISPLAY_FOR_STATE, balance_report, reading_report
from gateway.core.states import RELAY_OPEN_STATES, CreditState, due_trigger
from gateway.core.tariff import FlatPricing, Tariff, TieredPricing, day_edges

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
        or event.relay_unreadable
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
        settings.rated_power_w, elapsed, settings.plausibility_margin_percent, event.resolution_wh
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


@dataclass(frozen=True, slots=True)
class SteadySegment:
    """A stretch ``[begin, end)`` (UTC) of one local day with no price boundary inside: every
    Wh used in it costs ``rate_numerator / rate_denominator`` minor units."""

    begin: datetime
    end: datetime
    rate_numerator: int
    rate_denominator: int


@dataclass(frozen=True, slots=True)
class SteadyDay:
    """One local day of one tariff whose UTC offset is the same all day, cut into segments at
    its price boundaries. With it, a reading inside one segment is priced without
    ``price_consumption``'s general walk, to the same exact cost."""

    day: date
    begin: datetime
    end: datetime
    segments: tuple[SteadySegment, ...]

    def segment(self, start: datetime, end: datetime) -> SteadySegment | None:
        """The segment holding all of ``[start, end]`` (``end`` may be its end), or None."""
        for segment in self.segments:
            if segment.begin <= start < segment.end:
                return segment if end <= segment.end else None
        return None


#: the UTC offset is checked this often across a day; no zone changes it twice this fast
_OFFSET_PROBE = timedelta(minutes=15)


@lru_cache(maxsize=1024)
def _steady_day(tariff: Tariff, day: date) -> SteadyDay | None:
    """``day`` of ``tariff`` cut at its price boundaries, or None when the zone's offset
    changes on that day (DST) or the pricing is tiered: the general path prices those."""
    energy = tariff.energy
    if isinstance(energy, TieredPricing):
        return None
    tz = tariff.tz
    offset = datetime.combine(day, time(0), tzinfo=tz).utcoffset()
    assert offset is not None
    begin = datetime.combine(day, time(0), tzinfo=UTC) - offset
    end = begin + timedelta(days=1)
    probe = begin
    while probe <= end:
        if probe.astimezone(tz).utcoffset() != offset:
            return None
        probe += _OFFSET_PROBE
    edges = [e.astimezone(UTC) for e in day_edges(energy, tariff.timezone, day)] or [begin]
    segments = []
    for seg_begin, seg_end in zip(edges, [*edges[1:], end], strict=True):
        if isinstance(energy, FlatPricing):
            price = energy.price_per_kwh
        else:
            price = energy.price_at(tariff.day_type(day), seg_begin.astimezone(tz).time())
        rate = energy_cost(1, price)
        segments.append(SteadySegment(seg_begin, seg_end, rate.numerator, rate.denominator))
    return SteadyDay(day, begin, end, tuple(segments))


#: the last steady day looked up per tariff object, keyed by ``id`` (the tariff is kept in
#: the value so the id cannot be reused while the entry lives)
_LAST_DAY: dict[int, tuple[Tariff, SteadyDay]] = {}
_LAST_DAY_LIMIT = 65_536


def steady_day(tariff: Tariff, instant: datetime) -> SteadyDay | None:
    """The steady local day of ``tariff`` holding ``instant``, or None (see ``_steady_day``).
    Called for every reading: the usual answer is the one given last time for this tariff
    object, found by identity and two comparisons instead of a time zone conversion and a
    hash of the tariff."""
    last = _LAST_DAY.get(id(tariff))
    if last is not None and last[0] is tariff:
        known = last[1]
        if known.begin <= instant < known.end:
            return known
    found = _steady_day(tariff, instant.astimezone(tariff.tz).date())
    if found is not None:
        if len(_LAST_DAY) >= _LAST_DAY_LIMIT:
            _LAST_DAY.clear()
        _LAST_DAY[id(tariff)] = (tariff, found)
    return found
