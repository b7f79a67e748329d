"""`meter-provision enrol`: the command line around :mod:`provisioning.enrol` (add) and
:mod:`provisioning.enrol_changes` (``--update``, ``--remove``)."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from gateway.public import StoredMeter, StoreError
from protocol.cli import Subcommands, add_config_option
from provisioning.dlt645_fields import where_on_bus
from provisioning.enrol import (
    PlannedMeter,
    check_meter_id,
    check_unique,
    merge_extras,
    plan_csv,
    plan_meter,
)
from provisioning.enrol_changes import plan_update, removal_event, update_event
from provisioning.enrol_settings import money_text
from provisioning.errors import ProvisionError
from provisioning.site import (
    load_extras,
    load_site_config,
    open_store,
    save_extras,
    tell_gateway,
)

EXAMPLE = """\
examples:
  meter-provision enrol --meter PE1-000042 --bus rs485-1 --unit 42 \\
      --key-file keys/PE1-000042.key --price-per-kwh 25.50 --credit 50.00 \\
      --customer-account ACC-1001 --expected-serial PE1-0007-000042
  meter-provision enrol --csv street-7.csv --price-per-kwh 25.50
  meter-provision enrol --update --meter PE1-000042 --expected-serial PE1-0007-000043
  meter-provision enrol --remove --meter PE1-000042

CSV: a header naming the columns (meter_id, bus, unit_id, key_file required; also map,
key_epoch, customer_account, credit, price_per_kwh, currency, tariff_file, settings_file,
windows_file, alarm1, alarm2, overdraft_limit, reconnect_threshold, max_balance,
protected, reconnect_needs_button, expected_serial, relay_output, window_debt_cap). Flags
give defaults
for empty cells; relative paths are relative to the CSV file.

Money (credit, price per kWh, thresholds) is typed in currency units, e.g. 50.00, with the
decimals of the meter's currency (the tariff's; ISO 4217: KES 2, JPY 0, KWD 3). Tariff,
settings and windows files keep the store's form: minor units.

--update changes only the fields given (same checks as a new meter) and --remove
withdraws a meter; each queues an event for the headend (enrolment_updated,
enrolment_removed). The credit, protected supply and key epoch are not changed by --update.
Run both with the gateway service stopped (a running gateway keeps the meters it loaded).
A meter enrolled again after --remove starts with a fresh token window: give it a key of
a new epoch (keys meter-key --epoch N) so that its old tokens cannot be typed again.
"""

#: flag dest -> field name
_FLAG_FIELDS = {
    "meter": "meter_id",
    "bus": "bus",
    "unit": "unit_id",
    "map": "map",
    "key_file": "key_file",
    "key_epoch": "key_epoch",
    "customer_account": "customer_account",
    "credit": "credit",
    "price_per_kwh": "price_per_kwh",
    "currency": "currency",
    "tariff": "tariff_file",
    "settings": "settings_file",
    "windows": "windows_file",
    "alarm1": "alarm1",
    "alarm2": "alarm2",
    "overdraft_limit": "overdraft_limit",
    "reconnect_threshold": "reconnect_threshold",
    "max_balance": "max_balance",
    "expected_serial": "expected_serial",
    "relay_output": "relay_output",
    "window_debt_cap": "window_debt_cap",
    "address": "address",
    "password": "password",
    "operator_code": "operator_code",
}


def add_enrol_command(sub: Subcommands) -> None:
    p = sub.add_parser(
        "enrol",
        help="add meters to the store (one, or every row of a CSV file); correct or remove one",
        description="Validate every meter, then add them to the gateway's store.",
        epilog=EXAMPLE,
    )
    add_config_option(p)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--csv", type=Path, help="one meter per row; nothing is written on a bad row")
    what.add_argument("--update", action="store_true", help="change the given fields of --meter")
    what.add_argument("--remove", action="store_true", help="withdraw --meter from the store")
    p.add_argument("--meter", help="meter id, e.g. PE1-000042")
    p.add_argument("--bus", help="bus name from the config")
    p.add_argument("--unit", help="Modbus unit id 1..247")
    p.add_argument("--map", help="register map (default: pe1)")
    p.add_argument("--key-file", help="the meter's key, from `meter-provision keys meter-key`")
    p.add_argument("--key-epoch", help="key epoch (default: 0)")
    p.add_argument("--customer-account", help="the utility's customer account")
    p.add_argument("--credit", help="opening credit in currency units, e.g. 50.00 (default: 0)")
    p.add_argument(
        "--price-per-kwh", help="flat tariff: price per kWh in currency units, e.g. 25.50"
    )
    p.add_argument("--currency", help="currency of the flat tariff (default: the config's)")
    p.add_argument("--tariff", help="tariff file (JSON or TOML, the json_forms shape)")
    p.add_argument("--settings", help="whole settings file (JSON or TOML)")
    p.add_argument("--windows", help="no-disconnect windows file (JSON or TOML)")
    p.add_argument("--alarm1", help="low credit threshold, currency units")
    p.add_argument("--alarm2", help="very low credit threshold, currency units")
    p.add_argument("--overdraft-limit", help="emergency credit, currency units")
    p.add_argument("--reconnect-threshold", help="balance to reconnect above, currency units")
    p.add_argument("--max-balance", help="top-ups above it are refused, currency units")
    p.add_argument(
        "--protected", action=argparse.BooleanOptionalAction, help="protected supply: never cut"
    )
    p.add_argument(
        "--reconnect-needs-button",
        action=argparse.BooleanOptionalAction,
        help="reconnect only after the button",
    )
    p.add_argument("--expected-serial", help="serial number commissioning must read")
    p.add_argument(
        "--relay-output",
        metavar="BUS:UNIT:COIL",
        help="the relay module coil that switches a relay-less meter's supply",
    )
    p.add_argument(
        "--window-debt-cap",
        help="debt a no-disconnect window allows below the overdraft, currency units",
    )
    p.add_argument("--address", help="DL/T 645: the meter's 12-digit address (nameplate)")
    p.add_argument(
        "--password",
        help="DL/T 645: remote-control password, 8 hex digits, level first (02000000); "
        "'esam' for a meter this gateway reads and bills but cannot switch",
    )
    p.add_argument("--operator-code", help="DL/T 645: operator code, 8 hex digits")
    p.set_defaults(func=run_enrol)


def _flag_fields(args: argparse.Namespace) -> dict[str, str]:
    fields = {f: str(getattr(args, d)) for d, f in _FLAG_FIELDS.items() if getattr(args, d)}
    if args.protected is not None:
        fields["protected"] = "true" if args.protected else "false"
    if args.reconnect_needs_button is not None:
        fields["reconnect_needs_button"] = "true" if args.reconnect_needs_button else "false"
    return fields


def _find(meters: list[StoredMeter], meter_id: str) -> StoredMeter:
    for m in meters:
        if m.record.meter_id == meter_id:
            return m
    raise ProvisionError(f"meter {meter_id} is not enrolled")


def run_enrol(args: argparse.Namespace) -> int:
    if args.update or args.remove:
        return _change(args)
    config = load_site_config(args.config)
    now = datetime.now(UTC)
    fields = _flag_fields(args)
    planned: list[tuple[int, PlannedMeter]]
    source = ""
    if args.csv is not None:
        given = [f"--{n.replace('_', '-')}" for n in ("meter", "unit") if getattr(args, n)]
        if given:
            raise ProvisionError(f"{given[0]} names one meter: give it in the CSV, not with --csv")
        planned = plan_csv(args.csv, fields, config, now)
        source = str(args.csv)
    else:
        planned = [(0, plan_meter(fields, config, now))]
    with open_store(config) as store:
        check_unique(planned, store.load_meters(), source)
        save_extras(config, merge_extras(load_extras(config), planned))
        try:
            store.add_meters([(p.record, p.state) for _, p in planned], now)
        except StoreError as exc:
            where = f"{source}: " if source else ""
            raise ProvisionError(f"{where}{exc}: nothing enrolled") from None
    for _, p in planned:
        r = p.record
        print(
            f"enrolled {r.meter_id} on {r.bus} {where_on_bus(config, r)} ({r.map_name}), "
            f"credit {money_text(p.state.ledger.balance, p.state.settings)}, "
            f"state {p.state.credit}"
        )
    told = tell_gateway(config)
    if told is not None:
        print(told, file=sys.stderr if told.startswith("warning") else sys.stdout)
    return 0


def _change(args: argparse.Namespace) -> int:
    """``--update`` or ``--remove`` of the one meter ``--meter`` names."""
    flag = "--update" if args.update else "--remove"
    if not args.meter:
        raise ProvisionError(f"{flag} needs --meter")
    meter_id = check_meter_id(args.meter.strip())
    fields = _flag_fields(args)
    if args.remove and set(fields) != {"meter_id"}:
        raise ProvisionError("--remove takes only --meter (and --config)")
    config = load_site_config(args.config)
    now = datetime.now(UTC)
    with open_store(config) as store:
        meters = store.load_meters()
        stored = _find(meters, meter_id)
        all_extras = load_extras(config)
        if args.remove:
            store.remove_meter(stored.state, [removal_event(stored)], now)
            all_extras.pop(meter_id, None)
            save_extras(config, all_extras)
            balance = money_text(stored.state.ledger.balance, stored.state.settings)
            print(
                f"removed {meter_id} from the store (balance {balance} when removed; "
                "the gateway sends the enrolment_removed event to the headend)"
            )
            return 0
        planned = plan_update(fields, stored, all_extras.get(meter_id, {}), meters, config)
        store.update_meter(planned.record, planned.stored.state, [update_event(planned)], now)
        if planned.extras:
            all_extras[meter_id] = planned.extras
        save_extras(config, all_extras)
    print(f"updated {meter_id}: {', '.join(planned.changed)}")
    if planned.recommission:
        print(f"commission {meter_id} again: its address, key or expected serial changed")
    return 0
