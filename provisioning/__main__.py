"""`meter-provision` / `python -m provisioning`: the field engineer's command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from provisioning.key_files import KeyFileError
from provisioning.keys_cli import add_keys_commands
from provisioning.vend_cli import VendError, add_vend_command

NOT_BUILT = "not built yet (issue 7)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meter-provision",
        description="prepaid-edge provisioning CLI for field engineers.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in [
        ("init", "create the gateway identity and a starter gateway.toml"),
        ("scan", "probe a bus for meters"),
        ("enrol", "add meters to the store"),
        ("commission", "check an enrolled meter on site"),
        ("status", "table of every meter"),
    ]:
        sub.add_parser(name, help=f"{text} ({NOT_BUILT})")
    add_keys_commands(sub)
    add_vend_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    func = getattr(args, "func", None)
    if func is None:
        print(f"meter-provision {args.command}: {NOT_BUILT}", file=sys.stderr)
        return 2
    try:
        result: int = func(args)
    except (KeyFileError, VendError, ValueError) as exc:
        print(f"meter-provision {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
