"""`meter-sim`'s command line: its flags, their checks, and the control requests `ctl`
builds from them (what ``__main__`` runs is in ``__main__``)."""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from meter_sim.errors import ControlError, FaultPlanError, SetupError, SimError
from meter_sim.faults import FaultSpec
from meter_sim.server import DEFAULT_MAX_CONNECTIONS
from protocol.cli import CliParser, exit_codes_help

PROG = "meter-sim"


class CliError(SimError):
    """A command line that asks for something impossible (the user's fault)."""


def host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6)."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def fault_flag(text: str) -> FaultSpec:
    """``UNIT:KIND[:PROBABILITY[:key=value...]]``, e.g. ``3:timeout:0.5``, ``all:slow:1:delay=0.2``."""
    parts = text.split(":")
    if len(parts) < 2:
        raise argparse.ArgumentTypeError(f"{text!r} is not UNIT:KIND[:PROBABILITY[:key=value]]")
    data: dict[str, Any] = {"unit": parts[0], "kind": parts[1]}
    if len(parts) > 2:
        data["probability"] = parts[2]
    for opt in parts[3:]:
        key, eq, value = opt.partition("=")
        if not eq:
            raise argparse.ArgumentTypeError(f"fault option {opt!r} is not key=value")
        data[key] = value
    if data["unit"] != "all":
        data["unit"] = _int(data["unit"], "unit")
    try:
        return FaultSpec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise argparse.ArgumentTypeError(f"fault {text!r}: {where}: {err['msg']}") from None


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} {text!r} is not a whole number") from None


#: refusals that are the caller's to fix: exit 2 (usage, value, file or setup)
USAGE_ERRORS = (CliError, ControlError, FaultPlanError, SetupError)

EPILOG = f"""\
examples:
  {PROG} serve --meters 20 --tcp 127.0.0.1:5020 --control 127.0.0.1:5021 --speed 60
  {PROG} serve --meters 30 --no-tcp --rtu-pty --baud 9600
  {PROG} ctl --control 127.0.0.1:5021 keypad 3 12345678901234567890
  {PROG} COMMAND --help          (each command has its own examples)

{exit_codes_help(note="serve: stopped by Ctrl-C or SIGTERM is its normal end: exit 0")}"""
SERVE_EXAMPLES = f"""\
examples:
  {PROG} serve --map pe1 --meters 20 --tcp 127.0.0.1:5020 --control 127.0.0.1:5021 \\
      --speed 60 --seed 1
  {PROG} serve --meters 30 --no-tcp --rtu-pty --baud 9600     (RTU only, at 9,600 baud)
  {PROG} serve --meters 4 --fault 3:timeout:0.5 --faults plan.toml

It serves Modbus TCP unless --no-tcp; RTU on a pseudo-terminal with --rtu-pty or over
TCP with --rtu-tcp (--baud emulates an RTU line's wire time). It prints where it
listens, then "ready", and runs until Ctrl-C or SIGTERM (exit 0).
"""
CTL_EXAMPLES = f"""\
examples:
  {PROG} ctl keypad 3 12345678901234567890
  {PROG} ctl --control 127.0.0.1:5021 tamper 3 cover on
  {PROG} ctl load 3 2500
  {PROG} ctl fault all exception 0.1 code=6
  {PROG} ctl state 3
"""


def build_parser() -> CliParser:
    parser = CliParser(
        prog=PROG,
        description="prepaid-edge meter simulator: prepaid meters over Modbus TCP and RTU, "
        "and DL/T 645-2007 meters on an RS-485 bus.",
        epilog=EPILOG,
    )
    parser.add_version()
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser(
        "serve", help="serve simulated meters until interrupted", epilog=SERVE_EXAMPLES
    )
    serve.add_argument(
        "--protocol",
        choices=("modbus", "dlt645"),
        default="modbus",
        help="meter protocol; dlt645: one DL/T 645-2007 bus, RTU only",
    )
    serve.add_argument(
        "--map",
        help="meter model (default pe1; dlt645: dlt645_single_phase)",
    )
    serve.add_argument("--meters", type=int, default=20, help="number of meters")
    serve.add_argument(
        "--tcp",
        type=host_port,
        metavar="HOST:PORT",
        help="Modbus TCP; more than 247 meters take consecutive ports (default: 127.0.0.1:5020)",
    )
    serve.add_argument("--no-tcp", action="store_true", help="serve no Modbus TCP (RTU only)")
    serve.add_argument(
        "--control", type=host_port, metavar="HOST:PORT", help="control port (default: none)"
    )
    serve.add_argument("--speed", type=float, default=1.0, help="simulated seconds per second")
    serve.add_argument("--start", help="simulated start time, ISO 8601 with offset (default: now)")
    serve.add_argument("--seed", type=int, default=0, help="seed of loads and faults")
    serve.add_argument("--rtu-pty", action="store_true", help="RTU on a pseudo-terminal")
    serve.add_argument("--rtu-tcp", type=host_port, metavar="HOST:PORT", help="RTU over TCP")
    serve.add_argument(
        "--baud",
        type=int,
        help="emulate RTU wire time at this baud rate (dlt645: default 2400, 8E1; 0: none)",
    )
    serve.add_argument(
        "--reply-delay",
        type=float,
        metavar="SECONDS",
        help="dlt645: the meters' reply delay Td with wire time (default: 0.02)",
    )
    serve.add_argument(
        "--first-address",
        type=int,
        default=1,
        metavar="N",
        help="dlt645: address of meter 1, as a number; meter n has N+n-1 (default: 1)",
    )
    serve.add_argument(
        "--pipelining",
        action="store_true",
        help="answer pipelined Modbus TCP requests in one burst (default: one at a time "
        "per connection, as meters and serial device servers in the field do)",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help=f"connections each TCP port accepts at once; more are reset "
        f"(default: {DEFAULT_MAX_CONNECTIONS}; 0: no limit)",
    )
    serve.add_argument("--faults", type=Path, metavar="FILE", help="fault plan (.json, .toml)")
    serve.add_argument(
        "--fault",
        type=fault_flag,
        action="append",
        default=[],
        metavar="UNIT:KIND[:P[:k=v]]",
        help="a fault, e.g. 3:timeout:0.5 or all:exception:0.1:code=6 (repeatable)",
    )

    ctl = sub.add_parser("ctl", help="control a running simulator", epilog=CTL_EXAMPLES)
    ctl.add_argument(
        "--control",
        type=host_port,
        default=("127.0.0.1", 5021),
        metavar="HOST:PORT",
        help="the simulator's control port (default: 127.0.0.1:5021)",
    )
    csub = ctl.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, text: str, example: str) -> CliParser:
        return csub.add_parser(name, help=text, epilog=f"example:\n  {PROG} ctl {example}\n")

    keypad = action(
        "keypad",
        "type a 20-digit entry: keypad UNIT DIGITS (grouped as printed, or not)",
        "keypad 3 1234 5678 9012 3456 7890",
    )
    keypad.add_argument("unit", type=int)
    keypad.add_argument("digits", nargs="+", help="the 20 digits; spaces between groups are fine")
    button = action("button", "press the reconnect button: button UNIT", "button 3")
    button.add_argument("unit", type=int)
    tamper = action("tamper", "tamper UNIT cover|magnet|bypass|reverse on|off", "tamper 3 cover on")
    tamper.add_argument("unit", type=int)
    tamper.add_argument("tamper")
    tamper.add_argument("switch", choices=("on", "off"))
    load = action("load", "load UNIT WATTS|auto", "load 3 2500")
    load.add_argument("unit", type=int)
    load.add_argument("watts")
    fault = action(
        "fault",
        "fault UNIT|all KIND [PROBABILITY] [key=value...] | fault UNIT clear",
        "fault all exception 0.1 code=6",
    )
    fault.add_argument("unit")
    fault.add_argument("kind")
    fault.add_argument("probability", nargs="?", type=float, default=1.0)
    fault.add_argument("options", nargs="*", metavar="key=value")
    state = action("state", "dump one meter's whole state as JSON: state UNIT", "state 3")
    state.add_argument("unit", type=int)
    return parser


def ctl_payload(args: argparse.Namespace) -> dict[str, Any]:
    """The control request for a ``ctl`` command line."""
    match args.action:
        case "keypad":
            # A token is printed in groups of four ("1234 5678 ..."): typed as printed,
            # the groups arrive as separate words (or as one quoted word with spaces).
            digits = "".join(" ".join(args.digits).split())
            return {"cmd": "keypad", "unit": args.unit, "digits": digits}
        case "button":
            return {"cmd": "button", "unit": args.unit}
        case "tamper":
            return {
                "cmd": "tamper",
                "unit": args.unit,
                "tamper": args.tamper,
                "on": args.switch == "on",
            }
        case "load":
            watts = None if args.watts == "auto" else _int_or_fail(args.watts, "watts")
            return {"cmd": "load", "unit": args.unit, "watts": watts}
        case "fault":
            unit: int | str = args.unit if args.unit == "all" else _int_or_fail(args.unit, "unit")
            options: dict[str, float] = {}
            for opt in args.options:
                key, eq, value = opt.partition("=")
                if not eq:
                    raise CliError(f"fault option {opt!r} is not key=value")
                try:
                    options[key] = float(value)
                except ValueError:
                    raise CliError(f"fault option {opt!r}: value is not a number") from None
            return {
                "cmd": "fault",
                "unit": unit,
                "kind": args.kind,
                "probability": args.probability,
                "options": options,
            }
        case "state":
            return {"cmd": "state", "unit": args.unit}
    raise CliError(f"unknown action {args.action!r}")  # pragma: no cover


def _int_or_fail(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise CliError(f"{what} {text!r} is not a whole number") from None


def start_time(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"--start {text!r} is not an ISO 8601 time") from None
    if when.tzinfo is None:
        raise CliError(f"--start {text!r} needs a UTC offset (e.g. +00:00 or Z)")
    return when.timestamp()
