"""`meter-provision enrol --update` and `--remove`: correct or withdraw one enrolment.

An update takes only the fields given, checks them as `enrol` checks a new meter, and
keeps the rest. What money and the meter's security depend on is not edited here: the
credit moves only by tokens, protected supply by the headend's command, and the key
epoch by a key-change token. Each change is committed with an event for the headend
(``enrolment_updated`` or ``enrolment_removed``) through the store's outbox, in the
same transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pydantic import JsonValue

from gateway.public import GatewayConfig, MeterRecord, Publish, StoredMeter, settings_to_json
from protocol.errors import MapError
from protocol.regmap import Capability, load_map
from provisioning.enrol import EXTRAS, check_columns, plan_record
from provisioning.enrol_settings import (
    MONEY_SETTINGS,
    FieldError,
    build_settings,
    settings_currency,
)
from provisioning.errors import ProvisionError
from provisioning.events import ENROLMENT_REMOVED, ENROLMENT_UPDATED

#: fields an update may not change, and what changes them instead
NOT_BY_UPDATE = {
    "credit": "the credit changes only by a top-up token (or the headend)",
    "protected": "protected supply is switched by the headend's protect_on/protect_off command",
    "key_epoch": "the key epoch moves only with a key-change token (docs/tokens.md)",
}
_RECORD_FIELDS = (
    "bus",
    "unit_id",
    "map",
    "key_file",
    "relay_output",
    "address",
    "password",
    "operator_code",
)
_SETTINGS_FIELDS = (
    "price_per_kwh",
    "currency",
    "tariff_file",
    "settings_file",
    "windows_file",
    *MONEY_SETTINGS,
    "reconnect_needs_button",
)
#: after a change of any of these the meter must be commissioned again
RECOMMISSION = frozenset({"bus", "unit_id", "map", "key", "relay_output", "expected_serial"})


@dataclass(frozen=True, slots=True)
class PlannedUpdate:
    """A validated correction of one enrolment."""

    record: MeterRecord
    #: the meter as it will be stored: its state with the new settings
    stored: StoredMeter
    extras: dict[str, str]
    #: what changed, with the new values (a key as "replaced"): the event's details
    changed: dict[str, JsonValue]

    @property
    def recommission(self) -> bool:
        return bool(RECOMMISSION & set(self.changed))


def _current_fields(record: MeterRecord) -> dict[str, str]:
    return {
        "bus": record.bus,
        "unit_id": str(record.unit_id),
        "map": record.map_name,
        "key_epoch": str(record.key_epoch),
        "relay_output": record.relay_output or "",
    }


def plan_update(
    fields: Mapping[str, str],
    stored: StoredMeter,
    extras: Mapping[str, str],
    others: Sequence[StoredMeter],
    config: GatewayConfig,
    *,
    base: Path = Path(),
) -> PlannedUpdate:
    """Validate the fields given for ``stored``; raises :class:`FieldError` or
    :class:`ProvisionError` (nothing given, a unit taken by another meter)."""
    check_columns(fields)
    given = {k: v.strip() for k, v in fields.items() if k != "meter_id" and v.strip()}
    old = stored.record
    for name, instead in NOT_BY_UPDATE.items():
        if name in given and not (name == "key_epoch" and given[name] == str(old.key_epoch)):
            raise FieldError(name, f"not changed by --update: {instead}")
    if not given:
        raise ProvisionError(f"{old.meter_id}: nothing to update (give the fields to change)")
    merged = {**_current_fields(old), **given}
    own_relay = "map" in given and Capability.RELAY in _capabilities(given["map"])
    if "address" in given:
        merged.pop("unit_id")  # a DL/T 645 meter's new address replaces its number
    if own_relay and "relay_output" not in given:
        merged["relay_output"] = ""  # a meter with a relay of its own needs no relay module
    record = old
    if any(f in given for f in _RECORD_FIELDS):
        record = plan_record(
            merged, config, old.meter_id, base=base, key=old.meter_key, secret=old.control_secret
        )
    taken = {(m.record.bus, m.record.unit_id): m.record.meter_id for m in others}
    holder = taken.get((record.bus, record.unit_id))
    if holder is not None and holder != old.meter_id:
        raise FieldError(
            "unit_id", f"unit {record.unit_id} on bus {record.bus} is taken by {holder}"
        )
    settings = stored.state.settings
    if any(f in given for f in _SETTINGS_FIELDS):
        settings = build_settings(
            given, base, settings_currency(settings), start=settings_to_json(settings)
        )
    changed: dict[str, JsonValue] = {}
    for name, before, after in (
        ("bus", old.bus, record.bus),
        ("unit_id", old.unit_id, record.unit_id),
        ("map", old.map_name, record.map_name),
        ("relay_output", old.relay_output, record.relay_output),
    ):
        if before != after:
            changed[name] = after
    if record.meter_key != old.meter_key:
        changed["key"] = "replaced"
    if record.control_secret != old.control_secret:
        changed["control_secret"] = "replaced"  # noqa: S105 - a word, never the secret
    if settings != stored.state.settings:
        before_json, after_json = (
            settings_to_json(stored.state.settings),
            settings_to_json(settings),
        )
        changed["settings"] = {k: v for k, v in after_json.items() if before_json.get(k) != v}
    new_extras = dict(extras)
    for name in EXTRAS:
        if name in given and given[name] != extras.get(name):
            new_extras[name] = given[name]
            changed[name] = given[name]
    if not changed:
        raise ProvisionError(f"{old.meter_id}: already enrolled like that; nothing changed")
    state = replace(stored.state, settings=settings)
    return PlannedUpdate(record, replace(stored, record=record, state=state), new_extras, changed)


def _capabilities(map_name: str) -> frozenset[Capability]:
    """The capabilities of a map; none for an unknown map (``plan_record`` names it)."""
    try:
        return frozenset(load_map(map_name).capabilities)
    except MapError:
        return frozenset()


def update_event(planned: PlannedUpdate) -> Publish:
    details: dict[str, JsonValue] = {
        "changed": planned.changed,
        "commissioning_needed": planned.recommission,
    }
    body: dict[str, JsonValue] = {
        "kind": "event",
        "event": ENROLMENT_UPDATED,
        "reason": "meter-provision enrol --update",
        "details": details,
    }
    return Publish(planned.record.meter_id, "event", body)


def removal_event(stored: StoredMeter) -> Publish:
    """The last event of a meter: its balance and debt as they were, for the headend to
    settle with the customer."""
    ledger = stored.state.ledger
    currency = settings_currency(stored.state.settings)
    details: dict[str, JsonValue] = {
        "balance": ledger.balance,
        "debt": ledger.debt,
        "currency": currency,
    }
    body: dict[str, JsonValue] = {
        "kind": "event",
        "event": ENROLMENT_REMOVED,
        "reason": "meter-provision enrol --remove",
        "details": details,
    }
    return Publish(stored.record.meter_id, "event", body)
