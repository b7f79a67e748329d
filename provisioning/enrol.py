"""`meter-provision enrol`: validate every meter first (one on the command line or every
row of a CSV file), then write. A bad row is reported by file, line and field and nothing
from that file is written: every check that can fail (keys, maps, settings, money,
duplicates in the file and in the store) runs before the store adds the meters, all in
one transaction.

Money is typed in currency units (``50.00``) and parsed with the decimals of the meter's
currency (its tariff's) into the minor units the store keeps.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from gateway.public import (
    GatewayConfig,
    MeterRecord,
    MeterState,
    StoredMeter,
    enrol,
    parse_relay_output,
)
from protocol.currency import (
    currency_decimals,
    format_amount,
)
from protocol.errors import MapError
from protocol.regmap import Capability, RegisterMap, load_map
from protocol.tokens.keys import MAX_EPOCH, METER_KEY_BYTES
from provisioning.dlt645_fields import Dlt645FieldError, is_dlt645_bus, plan_dlt645_record

#: Columns a CSV file may have; meter_id, bus, unit_id and key_file are required.
from provisioning.enrol_settings import (
    FieldError,
    build_settings,
    field_bool,
    field_int,
    field_path,
    money_field,
    settings_currency,
)
from provisioning.errors import ProvisionError
from provisioning.key_files import KeyFileError, read_secret_file
from provisioning.site import Extras

COLUMNS = (
    "meter_id",
    "bus",
    "unit_id",
    "map",
    "key_file",
    "key_epoch",
    "customer_account",
    "credit",
    "price_per_kwh",
    "currency",
    "tariff_file",
    "settings_file",
    "windows_file",
    "alarm1",
    "alarm2",
    "overdraft_limit",
    "reconnect_threshold",
    "max_balance",
    "protected",
    "reconnect_needs_button",
    "expected_serial",
    "relay_output",
    "window_debt_cap",
    "address",
    "password",
    "operator_code",
)
REQUIRED = ("meter_id", "bus", "unit_id", "key_file")
#: Columns kept beside the store (it has no columns for them yet).
EXTRAS = ("customer_account", "expected_serial")
#: Money settings, typed in currency units; only the reconnect threshold may be below zero.
_METER_ID = re.compile(r"[A-Za-z0-9._-]{1,32}")
_EXTRA = "\x00extra"


@dataclass(frozen=True, slots=True)
class PlannedMeter:
    """A fully validated meter, ready to write."""

    record: MeterRecord
    state: MeterState
    extras: dict[str, str]


def check_meter_id(meter_id: str) -> str:
    """A meter id that fits both a token's MAC input and an MQTT topic level."""
    if not _METER_ID.fullmatch(meter_id):
        raise FieldError(
            "meter_id", f"{meter_id!r} must be 1..32 of letters, digits, '.', '_' and '-'"
        )
    return meter_id


def _relay_output(
    fields: Mapping[str, str], regmap: RegisterMap, map_name: str, config: GatewayConfig
) -> str | None:
    """A relay-less meter is prepaid only with a relay output (a relay module's coil)."""
    relay_output = fields.get("relay_output", "").strip() or None
    if relay_output is not None:
        if Capability.RELAY in regmap.capabilities:
            raise FieldError("relay_output", f"map {map_name} has its own relay")
        try:
            relay_bus, _unit, _coil = parse_relay_output(relay_output)
        except ValueError as exc:
            raise FieldError("relay_output", str(exc)) from None
        if relay_bus not in {b.name for b in config.buses}:
            raise FieldError("relay_output", f"unknown bus {relay_bus!r}")
    elif Capability.RELAY not in regmap.capabilities:
        raise FieldError(
            "map",
            f"map {map_name} has no relay: refused as prepaid unless a relay_output "
            "(BUS:UNIT:COIL of a relay module) is given",
        )
    return relay_output


def plan_record(
    fields: Mapping[str, str],
    config: GatewayConfig,
    meter_id: str,
    *,
    base: Path = Path(),
    key: bytes | None = None,
    secret: str | None = None,
) -> MeterRecord:
    """A meter's bus, unit id, map, relay output, key epoch and key, validated; ``key``
    stands in for a key file not given (an update keeping the enrolled key), ``secret``
    for a DL/T 645 meter's password not given."""
    bus = fields.get("bus", "").strip()
    if bus not in {b.name for b in config.buses}:
        known = ", ".join(b.name for b in config.buses) or "none in the config"
        raise FieldError("bus", f"unknown bus {bus!r} (buses: {known})")
    if is_dlt645_bus(config, bus):
        epoch, key = _key_and_epoch(fields, base, key)
        try:
            return plan_dlt645_record(fields, meter_id, bus, key, epoch, secret=secret)
        except Dlt645FieldError as exc:
            raise FieldError(exc.field, exc.problem) from None
    if fields.get("address", "").strip() or fields.get("password", "").strip():
        field = "address" if fields.get("address", "").strip() else "password"
        raise FieldError(field, f"bus {bus} speaks Modbus: a meter on it has a unit_id")
    unit = field_int(fields, "unit_id")
    if unit is None or not 1 <= unit <= 247:
        raise FieldError("unit_id", f"{fields.get('unit_id', '').strip()!r} must be 1..247")
    map_name = fields.get("map", "").strip() or "pe1"
    try:
        regmap = load_map(map_name)
    except MapError as exc:
        raise FieldError("map", str(exc)) from None
    relay_output = _relay_output(fields, regmap, map_name, config)
    epoch, key = _key_and_epoch(fields, base, key)
    try:
        return MeterRecord(meter_id, bus, unit, map_name, key, epoch, relay_output)
    except ValueError as exc:
        raise FieldError("meter_id", str(exc)) from None


def _key_and_epoch(fields: Mapping[str, str], base: Path, key: bytes | None) -> tuple[int, bytes]:
    """The key epoch and the meter key (from its file, else ``key``), validated."""
    epoch = field_int(fields, "key_epoch", 0)
    assert epoch is not None
    if not 0 <= epoch <= MAX_EPOCH:
        raise FieldError("key_epoch", f"{epoch} must be 0..{MAX_EPOCH}")
    key_file = field_path(fields, "key_file", base)
    if key_file is not None:
        try:
            key = read_secret_file(key_file, METER_KEY_BYTES)
        except KeyFileError as exc:
            raise FieldError("key_file", str(exc)) from None
    if key is None:
        raise FieldError("key_file", "required")
    return epoch, key


def check_columns(fields: Mapping[str, str]) -> None:
    unknown = sorted(set(fields) - set(COLUMNS))
    if unknown:
        raise FieldError(unknown[0], f"unknown column; columns are: {', '.join(COLUMNS)}")


def plan_meter(
    fields: Mapping[str, str],
    config: GatewayConfig,
    now: datetime,
    *,
    base: Path = Path(),
) -> PlannedMeter:
    """Validate one meter's fields (strings, as from a CSV row); raises :class:`FieldError`."""
    check_columns(fields)
    for name in REQUIRED:
        if name == "unit_id" and fields.get("address", "").strip():
            continue  # a DL/T 645 meter is found by its address
        if not fields.get(name, "").strip():
            raise FieldError(name, "required")
    meter_id = check_meter_id(fields["meter_id"].strip())
    record = plan_record(fields, config, meter_id, base=base)
    settings = build_settings(fields, base, config.tokens.currency)
    decimals = currency_decimals(settings_currency(settings))
    credit = money_field(fields, "credit", decimals) or 0
    if credit > settings.max_balance:
        raise FieldError(
            "credit",
            f"{fields['credit'].strip()} is above max_balance "
            f"{format_amount(settings.max_balance, decimals)}",
        )
    protected = field_bool(fields, "protected")
    try:
        state = enrol(meter_id, settings, now, opening_balance=credit, protected=protected)
    except ValueError as exc:
        raise FieldError("meter_id", str(exc)) from None
    return PlannedMeter(record, state, extras_of(fields))


def extras_of(fields: Mapping[str, str]) -> dict[str, str]:
    """The enrolment extras the store has no columns for, as given."""
    return {k: fields[k].strip() for k in EXTRAS if fields.get(k, "").strip()}


def check_unique(
    planned: Sequence[tuple[int, PlannedMeter]],
    existing: Sequence[StoredMeter],
    source: str = "",
) -> None:
    """Refuse a meter id or a (bus, unit id) already enrolled or given twice; ``source``
    names the file the lines are of."""
    ids = {m.record.meter_id: "the store" for m in existing}
    units = {(m.record.bus, m.record.unit_id): m.record.meter_id for m in existing}
    for line, p in planned:
        r = p.record
        if r.meter_id in ids:
            where = ids[r.meter_id]
            fix = ""
            if where == "the store":  # what to do about it, for the one who typed it
                fix = " (enrol --update changes an enrolled meter"
                fix += "; take its row out of the file)" if line else ")"
            raise RowError(line, "meter_id", f"{r.meter_id} is already in {where}{fix}", source)
        if (r.bus, r.unit_id) in units:
            raise RowError(
                line,
                "unit_id",
                f"unit {r.unit_id} on bus {r.bus} is taken by {units[(r.bus, r.unit_id)]}",
                source,
            )
        ids[r.meter_id] = f"line {line}" if line else "this command"
        units[(r.bus, r.unit_id)] = r.meter_id


class RowError(ProvisionError):
    """A bad row of a CSV file, by file, line and field: ``street-7.csv line 4: unit_id:
    'x' is not a whole number``."""

    def __init__(self, line: int, field: str, problem: str, source: str = "") -> None:
        where = " ".join(w for w in (source, f"line {line}" if line else "") if w)
        super().__init__(f"{where}: {field}: {problem}" if where else f"{field}: {problem}")
        self.line = line
        self.field = field


def plan_csv(
    path: Path, defaults: Mapping[str, str], config: GatewayConfig, now: datetime
) -> list[tuple[int, PlannedMeter]]:
    """Every row of a CSV file, validated; the first bad one raises :class:`RowError`."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProvisionError(f"cannot read {path}: {exc}") from None
    reader = csv.DictReader(text.splitlines(), restkey=_EXTRA, strict=True)
    source = str(path)
    try:
        header = reader.fieldnames
    except csv.Error as exc:
        raise RowError(1, "header", str(exc), source) from None
    if not header:
        raise RowError(
            1, "header", "the file is empty: a header naming the columns is required", source
        )
    for name in header:
        if name is None or name.strip() not in COLUMNS:
            raise RowError(
                1, str(name), f"unknown column; columns are: {', '.join(COLUMNS)}", source
            )
    missing = [
        c
        for c in REQUIRED
        if c not in header and not defaults.get(c) and not (c == "unit_id" and "address" in header)
    ]
    if missing:
        raise RowError(1, missing[0], "required column missing from the header", source)
    out: list[tuple[int, PlannedMeter]] = []
    try:
        for row in reader:
            line = reader.line_num
            if _EXTRA in row:
                raise RowError(line, "row", f"more fields than the header's {len(header)}", source)
            missing_cells = [k for k, v in row.items() if v is None]
            if missing_cells:
                raise RowError(
                    line,
                    "row",
                    f"{len(header) - len(missing_cells)} fields, the header has {len(header)} "
                    f"(no cell for {', '.join(missing_cells)}; an empty cell still needs "
                    "its comma)",
                    source,
                )
            values = {k.strip(): (v or "") for k, v in row.items() if isinstance(v, str | None)}
            if not any(v.strip() for v in values.values()):
                continue
            fields = {**defaults, **{k: v for k, v in values.items() if v.strip()}}
            try:
                out.append((line, plan_meter(fields, config, now, base=path.parent)))
            except FieldError as exc:
                raise RowError(line, exc.field, exc.problem, source) from None
    except csv.Error as exc:
        raise RowError(reader.line_num, "row", str(exc), source) from None
    if not out:
        raise ProvisionError(f"{path}: no meters in the file")
    return out


def merge_extras(extras: Extras, planned: Sequence[tuple[int, PlannedMeter]]) -> Extras:
    merged = dict(extras)
    for _, p in planned:
        if p.extras:
            merged[p.record.meter_id] = dict(p.extras)
    return merged
