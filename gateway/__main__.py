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
from gateway.runner import StartupError, run_gateway, status_file

EXAMPLES = """\
examples:
  meter-gateway run --config /etc/prepaid-edge/gateway.toml
  meter-gateway status --config /etc/prepaid-edge/gateway.toml
  PREPAID_EDGE__MQTT__PASSWORD=secret meter-gateway run --config gateway.toml
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meter-gateway",
        description="prepaid-edge gateway: polls prepaid meters, keeps their credit, "
        "enforces supply locally and syncs to the headend over MQTT.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="run the gateway until SIGTERM",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--config", required=True, type=Path, metavar="FILE", help="gateway.toml")
    status = sub.add_parser("status", help="print the running gateway's health summary")
    status.add_argument("--config", required=True, type=Path, metavar="FILE", help="gateway.toml")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _status(config_path: Path, as_json: bool) -> int:
    config = load_config(config_path)
    path = status_file(config)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        print(
            f"meter-gateway status: no status at {path}: is the gateway running?", file=sys.stderr
        )
        return 1
    written = datetime.fromisoformat(data["written_at"])
    age = (datetime.now(UTC) - written).total_seconds()
    data["age_s"] = round(age, 1)
    if as_json:
        print(json.dumps(data, indent=2))
        return 0
    health = data["health"]
    stale = " (STALE: is the gateway running?)" if age > 30 else ""
    print(f"gateway {data['gateway']}, status written {age:.0f} s ago{stale}")
    print(f"broker: {data['broker']} {data['broker_address'] or ''}".rstrip())
    print(f"meters: {health['meters_online']}/{health['meters_total']} answering")
    faults = health.get("bus_faults") or {}
    for bus, state in sorted(health["buses"].items()):
        why = f" ({faults[bus]})" if bus in faults else ""
        print(f"  bus {bus}: {state}{why}")
    print(f"outbox: {health['outbox_depth']} messages waiting; last sync {health['last_sync']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "status":
            return _status(args.config, args.json)
        config = load_config(args.config)
        configure_logging(config.log_level, config.log_format)
        return run_gateway(config, args.config)
    except (ConfigError, StartupError) as exc:
        print(f"meter-gateway: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
