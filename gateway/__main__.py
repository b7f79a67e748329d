"""`meter-gateway` / `python -m gateway`: the gateway service's command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

NOT_BUILT = "The gateway service is not built yet (issue 6): this command only prints its help."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meter-gateway",
        description="prepaid-edge gateway service. " + NOT_BUILT,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run the gateway (not built yet)")
    run.add_argument("--config", metavar="FILE", help="gateway.toml")
    sub.add_parser("status", help="print the gateway's health summary (not built yet)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    print(f"meter-gateway {args.command}: {NOT_BUILT}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
