"""`prepaid-demo`'s command line: its flags and their limits, with the conventions every
prepaid-edge program keeps (protocol.cli): one-line usage errors, --version, an example,
defaults shown and the exit codes."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from protocol.cli import CliParser, exit_codes_help

PROG = "prepaid-demo"
MAX_SPEED = 100_000  # the gateway's [simulation] clock_speed limit

EXAMPLES = """\
examples:
  make demo ARGS="--meters 20 --speed 60 --duration 90"
  python -m prepaid_demo --duration 90 --plain     (the same, in the project's venv)
"""
#: the demo is stopped by a person or a closed terminal; only a child dying is a failure
EXIT_NOTE = "its normal stop (Ctrl-C, SIGTERM, a closed terminal) exits 0; a child that dies, 1"


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number above 0")
    return value


def _speed(text: str) -> float:
    value = _positive_float(text)
    if value > MAX_SPEED:
        raise argparse.ArgumentTypeError(f"{text!r}: the gateway's clock runs at most {MAX_SPEED}x")
    return value


def _meters(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 2 <= value <= 247:
        raise argparse.ArgumentTypeError(f"{text!r}: the demo runs 2 to 247 meters")
    return value


def build_parser() -> CliParser:
    parser = CliParser(
        prog=PROG,
        description="prepaid-edge in one command: simulator, broker and gateway, with a live\n"
        "view of the gateway's MQTT messages. Ctrl-C stops everything.",
        epilog=EXAMPLES + "\n" + exit_codes_help(note=EXIT_NOTE),
    )
    parser.add_version()
    parser.add_argument("--meters", type=_meters, default=20, help="simulated meters")
    parser.add_argument("--speed", type=_speed, default=60.0, help="simulated seconds per second")
    parser.add_argument("--seed", type=int, default=1, help="seed of loads and balances")
    parser.add_argument(
        "--duration",
        type=_positive_float,
        metavar="SECONDS",
        help="run unattended this long, then stop everything and exit 0",
    )
    parser.add_argument(
        "--no-mosquitto",
        action="store_true",
        help="use the embedded pure-Python broker (amqtt) even if mosquitto is installed",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep the site's files here, created owner-only (default: a temporary folder)",
    )
    parser.add_argument(
        "--plain", action="store_true", help="print the story as lines even on a terminal"
    )
    return parser
