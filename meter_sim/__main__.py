"""`meter-sim` / `python -m meter_sim`: serve simulated meters, or control a running simulator.

Bad input ends with one line on stderr (``meter-sim COMMAND: error: ...``): exit 2 for a
command line, value, fault plan or setup the simulator refuses (nothing was started or
changed), 1 when no simulator answers at the control address. ``serve`` ends with exit 0
on Ctrl-C or SIGTERM, its normal stop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import selectors
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

from pydantic import ValidationError

from meter_sim.clock import ScaledClock
from meter_sim.dlt645_server import REPLY_DELAY
from meter_sim.dlt645_simulator import DEFAULT_BAUD as DLT645_BAUD
from meter_sim.dlt645_simulator import Dlt645Simulator
from meter_sim.errors import ControlError, FaultPlanError, SetupError, SimError
from meter_sim.faults import FaultPlan, FaultSpec, load_fault_plan
from meter_sim.server import DEFAULT_MAX_CONNECTIONS
from meter_sim.simulator import Simulator
from protocol.cli import CliParser, ExitCode, error_line, exit_codes_help, survive_closed_stdout
from protocol.dlt645.meter_map import shipped_dlt645_map_names
from protocol.regmap import shipped_map_names

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
_USAGE_ERRORS = (CliError, ControlError, FaultPlanError, SetupError)

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


async def _ctl(args: argparse.Namespace) -> int:
    from meter_sim.control import request  # noqa: PLC0415 - only ctl needs it

    payload = ctl_payload(args)
    host, port = args.control
    try:
        reply = await request(host, port, payload)
    except OSError as exc:
        raise SimError(f"no simulator at {host}:{port} ({exc.strerror or exc})") from None
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error")))
    print(json.dumps(reply["result"], indent=2, sort_keys=True))
    return 0


def _start_time(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"--start {text!r} is not an ISO 8601 time") from None
    if when.tzinfo is None:
        raise CliError(f"--start {text!r} needs a UTC offset (e.g. +00:00 or Z)")
    return when.timestamp()


async def _serve(args: argparse.Namespace) -> int:
    if args.protocol == "dlt645":
        return await _serve_dlt645(args)
    if args.reply_delay is not None or args.first_address != 1:
        raise CliError("--reply-delay and --first-address are for --protocol dlt645")
    args.map = args.map or "pe1"
    if args.map not in shipped_map_names():
        raise CliError(f"unknown map {args.map!r}; shipped maps: {', '.join(shipped_map_names())}")
    if args.meters < 1:
        raise CliError("--meters must be at least 1")
    if args.speed <= 0:
        raise CliError("--speed must be positive")
    rtu = args.rtu_pty or args.rtu_tcp is not None
    if args.no_tcp and not rtu:
        raise CliError("--no-tcp leaves nothing to serve: add --rtu-pty or --rtu-tcp HOST:PORT")
    if args.baud is not None and not rtu:
        raise CliError("--baud emulates an RTU line: add --rtu-pty or --rtu-tcp HOST:PORT")
    if args.baud is not None and args.baud <= 0:
        raise CliError("--baud must be positive")
    if args.max_connections < 0:
        raise CliError("--max-connections must be 0 (no limit) or more")
    plan = load_fault_plan(args.faults) if args.faults else FaultPlan()
    rtu_tcp = args.rtu_tcp
    control = args.control
    tcp_host, tcp_port = args.tcp or ("127.0.0.1", 5020)
    if rtu_tcp and rtu_tcp[0] != tcp_host:
        raise CliError("--tcp and --rtu-tcp must use the same host")
    clock = ScaledClock(args.speed, _start_time(args.start))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Simulator.start(
        meters=args.meters,
        map_name=args.map,
        host=tcp_host,
        tcp_port=None if args.no_tcp else tcp_port,
        rtu_pty=args.rtu_pty,
        rtu_tcp_port=rtu_tcp[1] if rtu_tcp else None,
        baud=args.baud,
        clock=clock,
        seed=args.seed,
        faults=[*plan.faults, *args.fault],
        control_port=control[1] if control else None,
        control_host=control[0] if control else "127.0.0.1",
        pipelining=args.pipelining,
        max_connections=args.max_connections or None,
    ) as sim:
        n = len(sim.meters)
        for k, (host, port) in enumerate(sim.tcp_addresses):
            first = k * 247 + 1
            print(f"modbus-tcp {host}:{port} meters {first}..{min(n, first + 246)} as units 1..")
        if sim.rtu_tcp_address:
            host, port = sim.rtu_tcp_address
            print(f"rtu-tcp {host}:{port} meters 1..{n}")
        if sim.rtu_pty_path:
            print(f"rtu-pty {sim.rtu_pty_path} meters 1..{n}")
        if sim.control_address:
            host, port = sim.control_address
            print(f"control {host}:{port}")
        print(f"ready: map {sim.regmap.name}, {n} meters, speed {args.speed}, seed {args.seed}")
        sys.stdout.flush()
        await stop.wait()
    return 0


async def _serve_dlt645(args: argparse.Namespace) -> int:
    """One DL/T 645 bus: on a pty and/or RTU over TCP."""
    names = shipped_dlt645_map_names()
    args.map = args.map or "dlt645_single_phase"
    if args.map not in names:
        raise CliError(f"unknown DL/T 645 map {args.map!r}; shipped: {', '.join(names)}")
    if args.tcp is not None:
        raise CliError("DL/T 645 has no TCP framing of its own: use --rtu-tcp (or --rtu-pty)")
    if not (args.rtu_pty or args.rtu_tcp):
        raise CliError("--protocol dlt645 needs --rtu-pty or --rtu-tcp HOST:PORT")
    if args.meters < 1:
        raise CliError("--meters must be at least 1")
    if args.speed <= 0:
        raise CliError("--speed must be positive")
    baud = dlt645_baud(args.baud)
    plan = load_fault_plan(args.faults) if args.faults else FaultPlan()
    control = args.control
    clock = ScaledClock(args.speed, _start_time(args.start))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    host = args.rtu_tcp[0] if args.rtu_tcp else "127.0.0.1"
    async with Dlt645Simulator.start(
        meters=args.meters,
        map_name=args.map,
        host=host,
        rtu_pty=args.rtu_pty,
        rtu_tcp_port=args.rtu_tcp[1] if args.rtu_tcp else None,
        baud=baud,
        reply_delay=REPLY_DELAY if args.reply_delay is None else args.reply_delay,
        clock=clock,
        seed=args.seed,
        first_address=args.first_address,
        faults=[*plan.faults, *args.fault],
        control_port=control[1] if control else None,
        control_host=control[0] if control else "127.0.0.1",
    ) as sim:
        n = len(sim.meters)
        span = f"meters 1..{n}, addresses {sim.address_of(1)}..{sim.address_of(n)}"
        if sim.rtu_tcp_address:
            host, port = sim.rtu_tcp_address
            print(f"rtu-tcp {host}:{port} {span}")
        if sim.rtu_pty_path:
            print(f"rtu-pty {sim.rtu_pty_path} {span}")
        if sim.control_address:
            host, port = sim.control_address
            print(f"control {host}:{port}")
        wire = f"{baud} baud 8E1" if baud else "no wire time"
        print(
            f"ready: protocol dlt645, map {sim.model_map.name}, {n} meters, {wire}, "
            f"speed {args.speed}, seed {args.seed}"
        )
        sys.stdout.flush()
        await stop.wait()
    return 0


def dlt645_baud(flag: int | None) -> int | None:
    """The emulated baud rate of a DL/T 645 bus: 2400 unless told; 0 means none."""
    if flag is None:
        return DLT645_BAUD
    if flag < 0:
        raise CliError("--baud must not be negative")
    return flag or None


def _loop_factory(baud: int | None) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """With wire-time emulation, a loop whose timers fire to the microsecond.

    epoll takes whole milliseconds, rounded up: a reply due 7.2 ms on would leave about
    8.1 ms on, later than a real line delivers it (about 1 ms per exchange, 12% of one
    at 115200 baud). select() takes microseconds, and the simulator has few sockets.
    """
    if baud is None:
        return None
    return lambda: asyncio.SelectorEventLoop(selectors.SelectSelector())


class _Terminated(Exception):  # noqa: N818 (a signal, not an error)
    """SIGTERM outside ``serve`` (which stops on it by itself)."""


def _terminated(_signum: int, _frame: FrameType | None) -> None:
    raise _Terminated


def main(argv: Sequence[str] | None = None) -> int:
    if threading.current_thread() is not threading.main_thread():
        return survive_closed_stdout(lambda: _main(argv))
    before = signal.signal(signal.SIGTERM, _terminated)
    try:
        return survive_closed_stdout(lambda: _main(argv))
    finally:
        signal.signal(signal.SIGTERM, before)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        return parser.no_command()
    prog = f"{PROG} {args.command}"
    try:
        if args.command == "serve":
            baud = dlt645_baud(args.baud) if args.protocol == "dlt645" else args.baud
            with asyncio.Runner(loop_factory=_loop_factory(baud)) as runner:
                return runner.run(_serve(args))
        return asyncio.run(_ctl(args))
    except _USAGE_ERRORS as exc:
        print(error_line(prog, exc), file=sys.stderr)
        return ExitCode.USAGE
    except SimError as exc:
        print(error_line(prog, exc), file=sys.stderr)
        return ExitCode.FAILURE
    except KeyboardInterrupt:  # before serve's own handlers are installed, or during ctl
        print(f"{prog}: interrupted by SIGINT", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except _Terminated:
        print(f"{prog}: stopped by SIGTERM", file=sys.stderr)
        return ExitCode.TERMINATED


if __name__ == "__main__":
    sys.exit(main())
