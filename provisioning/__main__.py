"""`meter-provision` / `python -m provisioning`: the field engineer's command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gateway.public import StoreError
from protocol.cli import CliParser, ExitCode, error_line, exit_codes_help, survive_closed_stdout
from provisioning.commission import add_commission_command
from provisioning.enrol_cli import add_enrol_command
from provisioning.errors import ProvisionError
from provisioning.init_cmd import add_init_command
from provisioning.interrupt import Interrupted, signals_interrupt
from provisioning.keys_cli import add_keys_commands
from provisioning.scan import add_scan_command
from provisioning.status import add_status_command
from provisioning.transfer import add_transfer_commands
from provisioning.vend_cli import add_vend_command

PROG = "meter-provision"
EPILOG = f"""\
examples:
  {PROG} init --dir /etc/prepaid-edge --gateway-id gw-street-7
  {PROG} scan --bus rs485-1
  {PROG} enrol --csv street-7.csv --price-per-kwh 25.50
  {PROG} COMMAND --help          (every command has its own examples)

Money typed on the command line and in CSV files is in currency units (12.50), with the
decimals of the meter's currency; the store and the MQTT messages keep minor units.
Every command that reads the gateway's config takes --config (default: ./gateway.toml).

{exit_codes_help()}"""


def build_parser() -> CliParser:
    parser = CliParser(
        prog=PROG,
        description="prepaid-edge provisioning CLI for field engineers.",
        epilog=EPILOG,
    )
    parser.add_version()
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


def _prog(args: argparse.Namespace) -> str:
    """The command's own name in its error lines, as argparse names it: ``meter-provision
    enrol``, ``meter-provision keys meter-key``."""
    words = [PROG, args.command]
    if getattr(args, "keys_command", None):
        words.append(args.keys_command)
    return " ".join(words)


def main(argv: Sequence[str] | None = None) -> int:
    return survive_closed_stdout(lambda: _main(argv))


def _main(argv: Sequence[str] | None) -> int:
    prog = PROG
    with signals_interrupt():
        try:
            parser = build_parser()
            args = parser.parse_args(argv)
            if args.command is None:
                return parser.no_command()
            prog = _prog(args)
            return _run(prog, args)
        except Interrupted as exc:
            print(f"{prog}: {exc.describe()}", file=sys.stderr)
            return exc.exit_code


def _run(prog: str, args: argparse.Namespace) -> int:
    try:
        result: int = args.func(args)
    except BrokenPipeError:
        raise  # the reader of our output went away: main ends quietly
    except OSError as exc:
        problem = exc.strerror or str(exc)
        where = f"{exc.filename}: " if exc.filename else ""
        print(error_line(prog, where + problem), file=sys.stderr)
        return ExitCode.USAGE
    except (ProvisionError, StoreError, ValueError) as exc:
        print(error_line(prog, exc), file=sys.stderr)
        return ExitCode.USAGE
    return result


if __name__ == "__main__":
    sys.exit(main())
