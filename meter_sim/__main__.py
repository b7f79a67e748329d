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
from collections.abc import Callable, Sequence

from meter_sim.cli_args import (
    USAGE_ERRORS,
    CliError,
    build_parser,
    ctl_payload,
    start_time,
)
from meter_sim.clock import ScaledClock
from meter_sim.dlt645_server import REPLY_DELAY
from meter_sim.dlt645_simulator import DEFAULT_BAUD as DLT645_BAUD
from meter_sim.dlt645_simulator import Dlt645Simulator
from meter_sim.errors import ControlError, SimError
from meter_sim.faults import FaultPlan, load_fault_plan
from meter_sim.simulator import Simulator
from protocol.cli import run_main
from protocol.dlt645.meter_map import shipped_dlt645_map_names
from protocol.regmap import shipped_map_names


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
    clock = ScaledClock(args.speed, start_time(args.start))
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
    clock = ScaledClock(args.speed, start_time(args.start))
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


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(build_parser, argv, _run, usage_errors=USAGE_ERRORS, failures=(SimError,))


def _run(args: argparse.Namespace) -> int:
    if args.command == "serve":
        baud = dlt645_baud(args.baud) if args.protocol == "dlt645" else args.baud
        with asyncio.Runner(loop_factory=_loop_factory(baud)) as runner:
            return runner.run(_serve(args))
    return asyncio.run(_ctl(args))


if __name__ == "__main__":
    sys.exit(main())
