"""`meter-provision status`: every enrolled meter, as a terminal table or JSON."""

from __future__ import annotations

import argparse
import json

from pydantic import JsonValue

from gateway.public import StoredMeter
from protocol.cli import Subcommands, add_config_option
from protocol.currency import currency_decimals, format_amount
from protocol.dlt645.frame import Address
from provisioning.enrol_settings import settings_currency
from provisioning.events import COMMISSIONED, ENROLMENT_REMOVED, ENROLMENT_UPDATED
from provisioning.site import load_extras, load_site_config, open_store

EXAMPLE = """\
examples:
  meter-provision status --config /etc/prepaid-edge/gateway.toml
  meter-provision status --json | jq '.[] | select(.comm_ok | not)'

The table shows balances in currency units; --json keeps the store's minor units (with
the currency). A DL/T 645 meter's unit is shown as the 12-digit address it was enrolled
by (--json: ``address``, beside the number in ``unit``).
"""

COLUMNS = (
    "meter",
    "bus",
    "unit",
    "map",
    "balance",
    "credit",
    "relay",
    "last reading",
    "comm",
    "commissioned",
)


def add_status_command(sub: Subcommands) -> None:
    p = sub.add_parser(
        "status",
        help="a table of every meter (balance, credit state, relay, last reading, health)",
        description="Every enrolled meter from the gateway's store.",
        epilog=EXAMPLE,
    )
    add_config_option(p)
    p.add_argument("--json", action="store_true", help="a JSON list for scripts")
    p.set_defaults(func=run_status)


#: a meter's communication as the gateway last committed it
COMM_OK, COMM_LOST, COMM_NEVER = "ok", "lost", "not read yet"


def communication(meter: StoredMeter) -> str:
    """From the store, not a guess: "not read yet" until the gateway committed a good
    reading, "lost" once it committed the meter's loss of communication, else "ok"."""
    if not meter.state.comm_ok:
        return COMM_LOST
    return COMM_OK if meter.state.ledger.read_at is not None else COMM_NEVER


def meter_status(
    meter: StoredMeter, commissioned: str | None, extras: dict[str, str], *, dlt645: bool = False
) -> dict[str, JsonValue]:
    """One meter's row; ``dlt645``: its unit is a DL/T 645 address (12 digits)."""
    state, record = meter.state, meter.record
    read_at = state.ledger.read_at
    comm = communication(meter)
    return {
        "meter": record.meter_id,
        "bus": record.bus,
        "unit": record.unit_id,
        "address": str(Address.of_number(record.unit_id)) if dlt645 else None,
        "map": record.map_name,
        "customer_account": extras.get("customer_account"),
        "balance": state.ledger.balance,
        "debt": state.ledger.debt,
        "currency": settings_currency(state.settings),
        "credit_state": str(state.credit),
        "relay": state.relay_word(),
        "relay_observed": state.relay_observed,
        "last_reading": read_at.isoformat() if read_at else None,
        "comm": comm,
        "comm_ok": comm == COMM_OK,
        "commissioned": commissioned,
    }


def _cells(row: dict[str, JsonValue]) -> list[str]:
    return [
        str(row["meter"]),
        str(row["bus"]),
        str(row["address"] or row["unit"]),
        str(row["map"]),
        format_amount(int(str(row["balance"])), currency_decimals(str(row["currency"]))),
        str(row["credit_state"]),
        str(row["relay"]),
        str(row["last_reading"] or "never")[:19],
        "LOST" if row["comm"] == COMM_LOST else str(row["comm"]),
        str(row["commissioned"] or "no"),
    ]


def render_table(rows: list[dict[str, JsonValue]]) -> str:
    table = [list(COLUMNS)] + [_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in table
    )


def commissioning_reports(events: list[dict[str, JsonValue]]) -> list[dict[str, JsonValue]]:
    """The commissioning reports that still hold: those after the last change of the
    enrolment that voids them (a new address, key or expected serial; a removal)."""
    reports: list[dict[str, JsonValue]] = []
    for body in events:
        event = body.get("event")
        details = body.get("details")
        if event == COMMISSIONED:
            reports.append(body)
        elif event == ENROLMENT_REMOVED or (
            event == ENROLMENT_UPDATED
            and isinstance(details, dict)
            and details.get("commissioning_needed") is True
        ):
            reports = []
    return reports


def last_commissioning(events: list[dict[str, JsonValue]]) -> str | None:
    """The last commissioning's result (``pass``/``fail``), if one still holds."""
    reports = commissioning_reports(events)
    return str(reports[-1].get("reason")) if reports else None


def run_status(args: argparse.Namespace) -> int:
    config = load_site_config(args.config)
    extras = load_extras(config)
    dlt645 = {b.name for b in config.buses if getattr(b, "protocol", None) == "dlt645"}
    with open_store(config) as store:
        rows = [
            meter_status(
                m,
                last_commissioning(store.events(m.record.meter_id)),
                extras.get(m.record.meter_id, {}),
                dlt645=m.record.bus in dlt645,
            )
            for m in store.load_meters()
        ]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif rows:
        print(render_table(rows))
    else:
        print("no meters enrolled")
    return 0
