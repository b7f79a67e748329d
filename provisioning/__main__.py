"""`meter-provision` / `python -m provisioning`: the field engineer's command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gateway.store import StoreError
from provisioning.commission import add_commission_command
from provisioning.enrol_cli import add_enrol_command
from provisioning.errors import ProvisionError
from provisioning.init_cmd import add_init_command
from provisioning.key_files import KeyFileError
from provisioning.keys_cli import add_keys_commands
from provisioning.scan import add_scan_command
from provisioning.status import add_status_command
from provisioning.transfer import add_transfer_commands
from provisioning.vend_cli import VendError, add_vend_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meter-provision",
        description="prepaid-edge provisioning CLI for field engineers.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_init_command(sub)
    add_scan_command(sub)
    add_enrol_command(sub)
    add_commission_command(sub)
    add_status_command(sub)
    add_transfer_commands(sub)
    add_keys_commands(sub)
    add_vend_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        result: int = args.func(args)
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        print(
            f"meter-provision {args.command}: error:{where} {exc.strerror or exc}", file=sys.stderr
        )
        return 2
    except (ProvisionError, KeyFileError, VendError, StoreError, ValueError) as exc:
        print(f"meter-provision {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
