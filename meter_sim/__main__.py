"""`meter-sim` / `python -m meter_sim`: the simulator's command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

NOT_BUILT = "The simulator is not built yet (issue 3): this command only prints its help."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meter-sim",
        description="prepaid-edge meter simulator. " + NOT_BUILT,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("serve", help="serve simulated meters (not built yet)")
    run.add_argument("--map", default="pe1")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    print(f"meter-sim {args.command}: {NOT_BUILT}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
