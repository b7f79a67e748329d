"""DL/T 645 RTU efficiency: the gateway's Dlt645Port and meter I/O reading energy + status
(two exchanges a meter) from 32 simulated meters round-robin, against the line's
arithmetic, at 2,400 and 9,600 baud. The simulator runs in its own process
(``meter_sim serve --protocol dlt645 --rtu-tcp ... --baud B``) and delivers each reply when
it would have finished arriving on a real line: 11 bits a byte (8E1), after the meters'
reply delay Td of 20 ms (the standard's least).

    .venv/bin/python -m bench.bench_dlt645_rtu [--seconds 20] [--baud 2400 --baud 9600]

- line: per meter, (request + reply bytes, wake-up bytes included) x 11 / baud for both
  exchanges, plus 2 x Td: the best any master could do on this line;
- efficiency = line / measured time per meter (target >= 90%); the port keeps one
  character of quiet before each request, which the line figure does not include;
- the same reads by the ``dlt645`` package's client over the same link, as a yardstick;
- with ``--measured``, the same with a gateway's default measured points read too (six
  more exchanges a meter, as one poll in ``measured_every`` does), against their line.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from bench.bench_gateway import start_sim
from gateway.config import DLT645_MEASURED
from gateway.dlt645_io import Dlt645MeterIO
from gateway.dlt645_port import Dlt645Port
from protocol.dlt645.frame import OVERHEAD, PREAMBLE, Address
from protocol.dlt645.meter_map import load_dlt645_map

METERS = 32
REPLY_DELAY = 0.020
BITS_PER_BYTE = 11
MODEL = load_dlt645_map("dlt645_single_phase")
POINTS = ("energy_import", "status")


def line_seconds(baud: int, points: tuple[str, ...] = POINTS) -> tuple[float, float]:
    """(bytes-only seconds, with reply delays) per meter for ``points`` (energy + status)."""
    total = 0
    for name in points:
        request = PREAMBLE + OVERHEAD + 4
        reply = PREAMBLE + OVERHEAD + 4 + MODEL.point(name).size
        total += request + reply
    wire = total * BITS_PER_BYTE / baud
    return wire, wire + len(points) * REPLY_DELAY


async def ours(
    host: str, port_no: int, baud: int, seconds: float, points: tuple[str, ...] = POINTS
) -> list[float]:
    """Seconds per meter read (``points``: energy + status), each measured."""
    port = Dlt645Port("bench", f"socket://{host}:{port_no}", baud=baud, timeout=1.0)
    io = Dlt645MeterIO(MODEL, points)
    addresses = [Address.of_number(n) for n in range(1, METERS + 1)]
    try:
        for a in addresses[:2]:  # connect and warm up
            await io.read(port, a)
        took: list[float] = []
        t_end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < t_end:
            t0 = time.monotonic()
            await io.read(port, addresses[n % METERS])
            took.append(time.monotonic() - t0)
            n += 1
    finally:
        await port.close()
    return took


async def theirs(host: str, port_no: int, seconds: float) -> list[float]:
    """The same reads through the dlt645 package's client (its TCP transport)."""
    from dlt645.service.clientsvc.async_client_service import (  # noqa: PLC0415 - optional yardstick
        AsyncMeterClientService,
    )

    client = AsyncMeterClientService.new_tcp_client(host, port_no, timeout=2.0)
    await client.connect()
    took: list[float] = []
    try:
        t_end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < t_end:
            client.set_address(Address.of_number(n % METERS + 1).raw.hex())
            t0 = time.monotonic()
            energy = await client.read_00(0x00010000)
            status = await client.read_04(0x04000503)
            took.append(time.monotonic() - t0)
            assert energy is not None
            assert status is not None
            n += 1
    finally:
        await client.disconnect()
    return took


def report(label: str, took: list[float], line: float) -> None:
    mean = statistics.mean(took)
    p90 = sorted(took)[9 * len(took) // 10]
    print(
        f"  {label:<22} {len(took):4d} meters  {1000 * mean:8.1f} ms a meter "
        f"(median {1000 * statistics.median(took):.1f}, p90 {1000 * p90:.1f})  "
        f"efficiency {100 * line / mean:5.1f}%"
    )


async def run(baud: int, seconds: float, package: bool, measured: bool) -> None:
    sim = start_sim(
        "--protocol", "dlt645", "--meters", str(METERS), "--rtu-tcp", "127.0.0.1:0",
        "--baud", str(baud), "--reply-delay", str(REPLY_DELAY),
    )  # fmt: skip
    try:
        assert sim.rtu_tcp is not None
        host, port_no = sim.rtu_tcp
        wire, line = line_seconds(baud)
        print(
            f"{baud} baud 8E1, energy + status from {METERS} meters: line {1000 * line:.1f} ms "
            f"a meter ({1000 * wire:.1f} ms of bytes + {len(POINTS)} x "
            f"{1000 * REPLY_DELAY:.0f} ms reply delay), {1 / line:.2f} meters/s at best"
        )
        base = await ours(host, port_no, baud, seconds)
        report("gateway Dlt645Port", base, line)
        quiet = len(POINTS) * BITS_PER_BYTE / baud  # the port's default: one character
        print(
            f"    (of which the port's quiet character before each request: {1000 * quiet:.1f} ms)"
        )
        if measured:
            points = POINTS + DLT645_MEASURED
            more_wire, more_line = line_seconds(baud, points)
            more = await ours(host, port_no, baud, seconds, points)
            report(f"+ {len(DLT645_MEASURED)} measured points", more, more_line)
            each = (statistics.mean(more) - statistics.mean(base)) / len(DLT645_MEASURED)
            each_line = (more_line - line) / len(DLT645_MEASURED)
            print(
                f"    a measured point: {1000 * each:.1f} ms measured, line "
                f"{1000 * each_line:.1f} ms ({1000 * (more_wire - wire) / len(DLT645_MEASURED):.1f}"
                f" ms of bytes + {1000 * REPLY_DELAY:.0f} ms reply delay)"
            )
        if package:
            report("dlt645 package client", await theirs(host, port_no, seconds / 2), line)
    finally:
        sim.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baud", type=int, action="append", help="repeatable (2400, 9600)")
    parser.add_argument("--seconds", type=float, default=20.0, help="per baud rate")
    parser.add_argument("--no-package", action="store_true", help="skip the dlt645 yardstick")
    parser.add_argument("--measured", action="store_true", help="also with the measured points")
    args = parser.parse_args()
    for baud in args.baud or [2400, 9600]:
        asyncio.run(run(baud, args.seconds, not args.no_package, args.measured))


if __name__ == "__main__":
    main()
