"""What a reading does in the general step: the register's step classified and charged (or
held, or refused), the rising status flags reported, the relay read back."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

from gateway.core.commands import Reason
from gateway.core.events import ReadingReceived
from gateway.core.forecast import SpendSample, add_sample
from gateway.core.ledger import DeltaKind, max_plausible_wh, register_delta
from gateway.core.reports import reading_report
from gateway.core.states import Trigger
from gateway.core.step_run import StepRun
from gateway.core.tariff import price_consumption
from protocol.event_kinds import EventKind

#: The status flags of a reading that are reported when they rise.
TAMPER_FLAGS = ("cover_open", "magnetic_tamper", "load_limit_tripped", "reverse_energy")
#: The flags of a reading reported when they rise, each by the event it raises.
RISING_FLAGS = {
    **dict.fromkeys(TAMPER_FLAGS, EventKind.TAMPER),
    "load_limit_tripped": EventKind.LOAD_LIMIT,
    "relay_unreadable": EventKind.RELAY_UNREACHABLE,
}
#: The flag a refused reading leaves until the next good one (one event per episode).
INVALID_READING = "reading_invalid"


def reading_invalid(run: StepRun, why: str) -> None:
    """A reading the ledger cannot take: nothing charged, one event per episode (a good
    reading ends it)."""
    if INVALID_READING not in run.state.flags:
        run.publish_event(EventKind.READING_INVALID, why)
        run.state = replace(run.state, flags=run.state.flags | {INVALID_READING})


def apply_reading(run: StepRun, event: ReadingReceived) -> None:
    """Charge the energy since the last reading, and report what the reading shows."""
    state, settings = run.state, run.settings
    ledger = state.ledger
    if not 0 <= event.energy_import_wh < 1 << settings.register_width_bits:
        reading_invalid(
            run,
            f"energy register {event.energy_import_wh} Wh outside a "
            f"{settings.register_width_bits}-bit register: not charged",
        )
        return
    if ledger.read_at is not None and event.read_at <= ledger.read_at:
        run.publish_event(
            EventKind.READING_IGNORED,
            "not newer than the last reading",
            read_at=event.read_at.isoformat(),
        )
        return
    elapsed = event.read_at - ledger.read_at if ledger.read_at else timedelta(0)
    plausible = max_plausible_wh(
        settings.rated_power_w,
        elapsed,
        settings.plausibility_margin_percent,
        event.resolution_wh,
    )
    delta = register_delta(
        ledger.register_wh, event.energy_import_wh, settings.register_width_bits, plausible
    )
    charged = 0
    moved: dict[str, Any] = {"register_wh": event.energy_import_wh, "read_at": event.read_at}
    if delta.kind in (DeltaKind.NORMAL, DeltaKind.ROLLOVER) and ledger.read_at is not None:
        priced = price_consumption(
            settings.tariffs, ledger.read_at, event.read_at, delta.energy_wh, ledger.tier
        )
        ledger, charged = ledger.charge_cost(priced.cost, tier=priced.tier, **moved)
        if delta.kind == DeltaKind.ROLLOVER:
            run.publish_event(
                EventKind.REGISTER_ROLLOVER, "register wrapped", energy_wh=delta.energy_wh
            )
        # Bypass only when the relay was seen open at both ends of the interval: the
        # first reading after a cut-off still holds the energy used before it.
        bypassed = state.open_at_last_reading and event.relay_closed is False
        if bypassed and delta.energy_wh > 0:
            run.publish_event(
                EventKind.TAMPER,
                "bypass: consumption while the relay is open",
                energy_wh=delta.energy_wh,
                charged=charged,
            )
    elif delta.kind == DeltaKind.IMPLAUSIBLE:
        ledger = replace(ledger, held_wh=ledger.held_wh + delta.energy_wh, **moved)
        run.publish_event(
            EventKind.ENERGY_HELD,
            "jump beyond the rated power over the elapsed time: held for review",
            energy_wh=delta.energy_wh,
            plausible_wh=plausible,
            held_wh=ledger.held_wh,
        )
    else:
        if delta.kind == DeltaKind.BACKWARDS:
            run.publish_event(
                EventKind.REGISTER_BACKWARDS,
                "register went backwards (meter reset or replaced): no refund, new baseline",
                previous_wh=ledger.register_wh,
                current_wh=event.energy_import_wh,
            )
        ledger = replace(ledger, **moved)
    flags = frozenset(name for name in RISING_FLAGS if getattr(event, name))
    run.state = replace(
        state,
        ledger=ledger,
        spend=add_sample(state.spend, SpendSample(event.read_at, ledger.charged)),
        flags=flags,
        open_at_last_reading=event.relay_closed is False,
    )
    run.commands.append(reading_report(state.meter_id, event, charged))
    for name in sorted(flags - state.flags):
        run.publish_event(RISING_FLAGS[name], name, power_w=event.power_w)
    if event.relay_closed is not None:
        run.relay_observed(event.relay_closed)
    if event.button_pressed:
        run.fire(Trigger.BUTTON_PRESSED, Reason("button_pressed", ledger.balance))
