"""`meter-gateway` / `python -m gateway`: run the gateway service, or print its health."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from gateway.config import ConfigError, load_config
from gateway.logs import configure_logging
from gateway.runner import run_gateway
from gateway.startup import GatewayCrashedError, StartupError, status_file
from protocol.cli import (
    CliParser,
    ExitCode,
    add_config_option,
    error_line,
    exit_codes_help,
    run_main,
)

PROG = "meter-gateway"
EXAMPLES = f"""\
examples:
  {PROG} run --config /etc/prepaid-edge/gateway.toml
  {PROG} status --config /etc/prepaid-edge/gateway.toml
  PREPAID_EDGE__MQTT__PASSWORD=secret {PROG} run --config gateway.toml
"""
RUN_EXAMPLES = f"""\
examples:
  {PROG} run --config /etc/prepaid-edge/gateway.toml
  PREPAID_EDGE__MQTT__PASSWORD=secret {PROG} run      (./gateway.toml)

SIGTERM or Ctrl-C stops the service cleanly (the last commit finishes) and exits 0.
"""
STATUS_EXAMPLES = f"""\
examples:
  {PROG} status --config /etc/prepaid-edge/gateway.toml
  {PROG} status --json | jq .health.outbox_depth

Exit 1 when no status file is found (the gateway is not running, or never ran here).
"""


def build_parser() -> CliParser:
    parser = CliParser(
        prog=PROG,
        description="prepaid-edge gateway: polls prepaid meters, keeps their credit, "
        "enforces supply locally and syncs to the headend over MQTT.",
        epilog=EXAMPLES
        + "\n"
        + exit_codes_help(note="run: stopped by SIGTERM or Ctrl-C is its normal end: exit 0"),
    )
    parser.add_version()
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run the gateway until SIGTERM", epilog=RUN_EXAMPLES)
    add_config_option(run)
    status = sub.add_parser(
        "status", help="print the running gateway's health summary", epilog=STATUS_EXAMPLES
    )
    add_config_option(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _status(config_path: Path, as_json: bool) -> int:
    config = load_config(config_path)
    path = status_file(config)
    try:
        data = json.loads(path.read_text())
        # Real time, not the gateway's clock: under a simulation clock that runs ahead,
        # the gateway's time would make the age negative. Files of older gateways lack it.
        written = datetime.fromisoformat(data.get("written_at_real") or data["written_at"])
        health = data["health"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        print(
            error_line(f"{PROG} status", f"no status at {path}: is the gateway running?"),
            file=sys.stderr,
        )
        return ExitCode.FAILURE
    age = (datetime.now(UTC) - written).total_seconds()
    data["age_s"] = round(age, 1)
    if as_json:
        print(json.dumps(data, indent=2))
        return ExitCode.OK
    stale = " (STALE: is the gateway running?)" if age > 30 else ""
    print(f"gateway {data['gateway']}, status written {age:.0f} s ago{stale}")
    print(f"broker: {data['broker']} {data['broker_address'] or ''}".rstrip())
    print(f"meters: {health['meters_online']}/{health['meters_total']} answering")
    faults = health.get("bus_faults") or {}
    for bus, state in sorted(health["buses"].items()):
        why = f" ({faults[bus]})" if bus in faults else ""
        print(f"  bus {bus}: {state}{why}")
    last_sync = health.get("last_sync") or "never"
    print(f"outbox: {health['outbox_depth']} messages waiting; last sync {last_sync}")
    return ExitCode.OK


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(
        build_parser,
        argv,
        _run,
        usage_errors=(ConfigError, StartupError),
        failures=(GatewayCrashedError,),
        terminated="stopped by SIGTERM while starting",
    )


def _run(args: argparse.Namespace) -> int:
    if args.command == "status":
        return _status(args.config, args.json)
    config = load_config(args.config)
    configure_logging(config.log_level, config.log_format)
    return run_gateway(config, args.config)


if __name__ == "__main__":
    sys.exit(main())
