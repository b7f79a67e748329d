"""`meter-provision enrol`: the command line around :mod:`provisioning.enrol`."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from gateway.store import StoreError
from provisioning.enrol import PlannedMeter, check_unique, merge_extras, plan_csv, plan_meter
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
      --key-file keys/PE1-000042.key --price-per-kwh 25.5 --credit 5000 \\
      --customer-account ACC-1001 --expected-serial PE1-0000-000042
  meter-provision enrol --csv street-7.csv --price-per-kwh 25.5

CSV: a header naming the columns (meter_id, bus, unit_id, key_file required; also map,
key_epoch, customer_account, credit, price_per_kwh, currency, tariff_file, settings_file,
windows_file, alarm1, alarm2, overdraft_limit, reconnect_threshold, max_balance,
protected, reconnect_needs_button, expected_serial, relay_output). Flags give defaults
for empty cells; relative paths are relative to the CSV file. Money is in minor units.
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
}


def add_enrol_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "enrol",
        help="add meters to the store (one, or every row of a CSV file)",
        description="Validate every meter, then add them to the gateway's store.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, default=Path("gateway.toml"), help="gateway.toml")
    p.add_argument("--csv", type=Path, help="one meter per row; nothing is written on a bad row")
    p.add_argument("--meter", help="meter id, e.g. PE1-000042")
    p.add_argument("--bus", help="bus name from the config")
    p.add_argument("--unit", help="Modbus unit id 1..247")
    p.add_argument("--map", help="register map (default pe1)")
    p.add_argument("--key-file", help="the meter's key, from `meter-provision keys meter-key`")
    p.add_argument("--key-epoch", help="key epoch (default 0)")
    p.add_argument("--customer-account", help="the utility's customer account")
    p.add_argument("--credit", help="initial credit, minor units (default 0)")
    p.add_argument("--price-per-kwh", help="flat tariff: price per kWh in minor units")
    p.add_argument("--currency", help="currency of the flat tariff (default from the config)")
    p.add_argument("--tariff", help="tariff file (JSON or TOML, the json_forms shape)")
    p.add_argument("--settings", help="whole settings file (JSON or TOML)")
    p.add_argument("--windows", help="no-disconnect windows file (JSON or TOML)")
    p.add_argument("--alarm1", help="low credit threshold, minor units")
    p.add_argument("--alarm2", help="very low credit threshold, minor units")
    p.add_argument("--overdraft-limit", help="emergency credit, minor units")
    p.add_argument("--reconnect-threshold", help="balance to reconnect above, minor units")
    p.add_argument("--max-balance", help="top-ups above it are refused, minor units")
    p.add_argument("--protected", action="store_true", help="protected supply: never cut")
    p.add_argument(
        "--reconnect-needs-button", action="store_true", help="reconnect only after the button"
    )
    p.add_argument("--expected-serial", help="serial number commissioning must read")
    p.add_argument(
        "--relay-output",
        metavar="BUS:UNIT:COIL",
        help="the relay module coil that switches a relay-less meter's supply",
    )
    p.set_defaults(func=run_enrol)


def _flag_fields(args: argparse.Namespace) -> dict[str, str]:
    fields = {f: str(getattr(args, d)) for d, f in _FLAG_FIELDS.items() if getattr(args, d)}
    if args.protected:
        fields["protected"] = "true"
    if args.reconnect_needs_button:
        fields["reconnect_needs_button"] = "true"
    return fields


def run_enrol(args: argparse.Namespace) -> int:
    config = load_site_config(args.config)
    now = datetime.now(UTC)
    fields = _flag_fields(args)
    planned: list[tuple[int, PlannedMeter]]
    if args.csv is not None:
        given = [f"--{n.replace('_', '-')}" for n in ("meter", "unit") if getattr(args, n)]
        if given:
            raise ProvisionError(f"{given[0]} names one meter: give it in the CSV, not with --csv")
        planned = plan_csv(args.csv, fields, config, now)
        where = f"{args.csv}: "
    else:
        planned = [(0, plan_meter(fields, config, now))]
        where = ""
    with open_store(config) as store:
        try:
            check_unique(planned, store.load_meters())
        except ProvisionError as exc:
            raise ProvisionError(f"{where}{exc}") from None
        save_extras(config, merge_extras(load_extras(config), planned))
        try:
            store.add_meters([(p.record, p.state) for _, p in planned], now)
        except StoreError as exc:
            raise ProvisionError(f"{where}{exc}: nothing enrolled") from None
    for _, p in planned:
        r = p.record
        print(
            f"enrolled {r.meter_id} on {r.bus} unit {r.unit_id} ({r.map_name}), "
            f"credit {p.state.ledger.balance}, state {p.state.credit}"
        )
    told = tell_gateway(config)
    if told is not None:
        print(told, file=sys.stderr if told.startswith("warning") else sys.stdout)
    return 0
