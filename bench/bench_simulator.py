"""Simulator throughput and memory at 1,000 PE-1 meters over Modbus TCP.

Starts ``meter-sim serve`` in its own process (so its resident memory is its own), then
4 client connections (4 processes) read the PE-1 input block (32 registers) from random meters, first
sequentially (one request in flight per connection), then pipelined (``--depth`` in
flight per connection). Prints requests per second and the simulator's RSS.

    .venv/bin/python bench/bench_simulator.py [--meters 1000] [--seconds 5] [--depth 16]
        [--compare-pymodbus]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

UNITS_PER_PORT = 247
BLOCK = 32
REPLY_LEN = 7 + 2 + 2 * BLOCK


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port_run(count: int) -> int:
    """A base port with ``count`` consecutive free ports after it (best effort)."""
    rng = random.Random()
    for _ in range(100):
        base = rng.randrange(20000, 60000)
        socks = []
        try:
            for k in range(count):
                s = socket.socket()
                s.bind(("127.0.0.1", base + k))
                socks.append(s)
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return base
    raise RuntimeError("no free port run")


def request(tid: int, unit: int) -> bytes:
    return struct.pack(">HHHBBHH", tid & 0xFFFF, 0, 6, unit, 4, 0, BLOCK)


def client(port: int, units: int, seconds: float, depth: int, seed: int) -> int:
    """One connection in its own process (plain blocking socket, the cheapest client Python
    has): ``depth`` requests in flight, a new one sent per reply. Returns replies received."""
    rng = random.Random(seed)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray(REPLY_LEN * depth)
    view = memoryview(buf)
    done = 0
    tid = 0
    deadline = time.perf_counter() + seconds
    sock.sendall(b"".join(request(tid + i, rng.randrange(1, units + 1)) for i in range(depth)))
    tid += depth
    pending = 0  # bytes of the current reply received so far
    while True:
        n = sock.recv_into(view[pending:], REPLY_LEN * depth - pending)
        if n == 0:
            raise ConnectionError("simulator closed the connection")
        pending += n
        replies, pending = divmod(pending, REPLY_LEN)
        if replies and done == 0 and buf[7:9] != bytes((4, 2 * BLOCK)):
            raise RuntimeError(f"not a {BLOCK}-register reply: {bytes(buf[:9]).hex()}")
        if replies:
            view[:pending] = view[replies * REPLY_LEN : replies * REPLY_LEN + pending]
            done += replies
            if time.perf_counter() >= deadline:
                break
            sock.sendall(
                b"".join(request(tid + i, rng.randrange(1, units + 1)) for i in range(replies))
            )
            tid += replies
    sock.close()
    return done


def measure(ports: list[int], meters: int, seconds: float, depth: int) -> float:
    """Reads per second from 4 connections (4 client processes), spread over the ports."""
    jobs = []
    for s in range(4):
        k = s % len(ports)
        units = min(UNITS_PER_PORT, meters - k * UNITS_PER_PORT)
        jobs.append((ports[k], units, seconds, depth, s))
    t0 = time.perf_counter()
    with multiprocessing.Pool(4) as pool:
        counts = pool.starmap(client, jobs)
    return sum(counts) / (time.perf_counter() - t0)


def serve_stock_pymodbus(base: int, nports: int) -> None:
    """The comparison: a stock pymodbus 3.16 server, 247 devices per port, same block."""
    import logging  # noqa: PLC0415 - only the comparison process needs these

    from pymodbus.datastore import (  # noqa: PLC0415
        ModbusDeviceContext,
        ModbusSequentialDataBlock,
        ModbusServerContext,
        ModbusSimulatorContext,
    )
    from pymodbus.server import ModbusTcpServer  # noqa: PLC0415

    logging.disable(logging.WARNING)  # its deprecation notice, once per device

    async def run() -> None:
        servers = []
        for k in range(nports):
            devices: dict[int, ModbusDeviceContext | ModbusSimulatorContext] = {
                u: ModbusDeviceContext(ir=ModbusSequentialDataBlock(1, list(range(BLOCK))))  # type: ignore[no-untyped-call]
                for u in range(1, UNITS_PER_PORT + 1)
            }
            context = ModbusServerContext(devices=devices, single=False)
            servers.append(ModbusTcpServer(context, address=("127.0.0.1", base + k)))
        tasks = [asyncio.ensure_future(s.serve_forever()) for s in servers]
        await asyncio.sleep(1.0)
        print("ready", flush=True)
        await asyncio.gather(*tasks)

    asyncio.run(run())


def run_phases(cmd: list[str], ports: list[int], args: argparse.Namespace) -> list[str]:
    """Start a server, measure sequential then pipelined reads and its RSS; lines to print."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        if not any(line.startswith("ready") for line in proc.stdout):
            raise RuntimeError(f"{cmd[2]} did not start")
        idle = rss_kib(proc.pid)
        lines = []
        for depth in (1, args.depth):
            cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
            rate = measure(ports, args.meters, args.seconds, depth)
            share = (cpu_seconds(proc.pid) - cpu0) / (time.perf_counter() - t0)
            mode = "sequential, 1" if depth == 1 else f"pipelined, {depth}"
            lines.append(
                f"  {mode} in flight per connection: {rate:,.0f} reads/s"
                f" (server CPU {share:.0%} of one core)"
            )
        busy = rss_kib(proc.pid)
        lines.append(f"  RSS: {idle / 1024:.1f} MiB after start, {busy / 1024:.1f} MiB after load")
        return lines
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument(
        "--compare-pymodbus", action="store_true", help="also measure a stock pymodbus server"
    )
    parser.add_argument("--serve-pymodbus", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_pymodbus:
        serve_stock_pymodbus(*args.serve_pymodbus)
        return 0
    nports = (args.meters + UNITS_PER_PORT - 1) // UNITS_PER_PORT
    base = free_port_run(nports)
    ports = [base + k for k in range(nports)]
    print(f"{args.meters} meters on {nports} TCP ports, 4 client connections (4 processes),")
    print(
        f"each read = {BLOCK} input registers; {os.cpu_count()} CPUs, python {sys.version.split()[0]}"
    )
    # Its capacity, not a field device: pipelined bursts answered at once, no connection limit.
    sim = [sys.executable, "-m", "meter_sim", "serve", "--meters", str(args.meters),
           "--tcp", f"127.0.0.1:{ports[0]}", "--speed", "1", "--seed", "1",
           "--pipelining", "--max-connections", "0"]  # fmt: skip
    print("meter-sim (PE-1 physics on every read):")
    print("\n".join(run_phases(sim, ports, args)))
    if args.compare_pymodbus:
        stock = [sys.executable, __file__, "--serve-pymodbus", str(ports[0]), str(nports)]
        print("stock pymodbus 3.16 server (static registers), same clients:")
        print("\n".join(run_phases(stock, ports, args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
