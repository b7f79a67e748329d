"""The credit lease: how much energy a meter may deliver on its own. Pure.

A customer who cuts the RS-485 wire stops the gateway from switching the meter; a meter
with a lease register (PE-1 holding registers 6-7) opens its relay by itself once it has
delivered the granted energy with no new grant. The grant is what the credit left before
exhaustion (balance plus emergency credit) buys at the highest price the tariff can
charge, plus a grace: the meter's rated power for ``grace_s`` (a few poll intervals), so
that a gateway in touch always cuts first, by its own rules, and the lease only ever
acts for a meter the gateway cannot reach. Inside a no-disconnect window it also covers
the rest of the window at the rated power, up to what the window's debt cap allows, and a protected meter gets no lease at all
(it must never trip by itself).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from gateway.core.meter_state import MeterState
from gateway.core.states import CreditState
from gateway.core.tariff import FlatPricing, Pricing, TimeOfUsePricing

#: The largest grant the u32 register holds (0 means "no lease").
MAX_LEASE_WH = 0xFFFF_FFFF


def highest_price_per_kwh(pricing: Pricing) -> Decimal:
    """The most one kWh can cost under ``pricing`` (minor units)."""
    if isinstance(pricing, FlatPricing):
        return pricing.price_per_kwh
    if isinstance(pricing, TimeOfUsePricing):
        return max([pricing.default_price_per_kwh, *(p.price_per_kwh for p in pricing.periods)])
    return max(block.price_per_kwh for block in pricing.blocks)


def lease_allowance_wh(state: MeterState, now: datetime, grace_s: float) -> int | None:
    """Energy (Wh) the meter may deliver before it must hear from the gateway again;
    None for no lease (protected supply, or energy that costs nothing)."""
    settings = state.settings
    if state.credit == CreditState.PROTECTED:
        return None
    schedule = settings.tariffs
    prices = [highest_price_per_kwh(schedule.at(now).energy)]
    prices += [
        highest_price_per_kwh(e.tariff.energy)
        for e in schedule.entries
        if e.activates_at is not None and e.activates_at > now
    ]
    price = max(prices)
    if price <= 0:
        return None
    credit = max(0, state.ledger.balance + settings.overdraft_limit)
    allowance = int(Decimal(credit) * 1000 / price)
    allowance += _at_rated_power(settings.rated_power_w, grace_s)
    window = settings.windows.active(now)
    end = settings.windows.next_edge(now) if window is not None else None
    if end is not None:
        # the rest of the window, but no further than its debt cap lets the balance fall
        capped = max(0, state.ledger.balance + settings.overdraft_limit + settings.window_debt_cap)
        allowance += min(
            _at_rated_power(settings.rated_power_w, (end - now).total_seconds()),
            int(Decimal(capped - credit) * 1000 / price),
        )
    return max(1, allowance)


def _at_rated_power(rated_power_w: int, seconds: float) -> int:
    """Wh a meter can deliver in ``seconds`` at its rated power, rounded up."""
    return -(-rated_power_w * max(0, int(seconds) + 1) // 3600)


def lease_register_value(allowance: int | None) -> int:
    """What to write to the lease register: 0 for no lease, else the grant, capped."""
    if allowance is None:
        return 0
    return min(allowance, MAX_LEASE_WH)
