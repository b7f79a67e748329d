"""`meter-provision` / `python -m provisioning`: the field engineer's command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

NOT_BUILT = "Provisioning is not built yet (issue 7): this command only prints its help."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meter-provision",
        description="prepaid-edge provisioning CLI for field engineers. " + NOT_BUILT,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in [
        ("init", "create the gateway identity and a starter gateway.toml"),
        ("scan", "probe a bus for meters"),
        ("enrol", "add meters to the store"),
        ("commission", "check an enrolled meter on site"),
        ("status", "table of every meter"),
    ]:
        sub.add_parser(name, help=f"{text} (not built yet)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    print(f"meter-provision {args.command}: {NOT_BUILT}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
