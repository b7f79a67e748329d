"""Simulator throughput and memory at 1,000 PE-1 meters over Modbus TCP.

Starts ``meter-sim serve`` in its own process (so its resident memory is its own), then
4 client connections (4 processes) read the PE-1 input block (32 registers) from random meters, first
sequentially (one request in flight per connection), then pipelined (``--depth`` in
flight per connection). Prints requests per second and the simulator's RSS.

    .venv/bin/python bench/bench_simulator.py [--meters 1000] [--seconds 5] [--depth 16]
"""

from __future__ import annotations

import argparse
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--depth", type=int, default=16)
    args = parser.parse_args()
    nports = (args.meters + UNITS_PER_PORT - 1) // UNITS_PER_PORT
    base = free_port_run(nports)
    proc = subprocess.Popen(
        [sys.executable, "-m", "meter_sim", "serve", "--meters", str(args.meters),
         "--tcp", f"127.0.0.1:{base}", "--speed", "1", "--seed", "1"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("ready"):
                break
        ports = [base + k for k in range(nports)]
        idle = rss_kib(proc.pid)
        results = []
        for depth in (1, args.depth):
            cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
            rate = measure(ports, args.meters, args.seconds, depth)
            share = (cpu_seconds(proc.pid) - cpu0) / (time.perf_counter() - t0)
            results.append((rate, share))
        busy = rss_kib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    print(f"meters: {args.meters} PE-1 on {nports} TCP ports; block read: 32 input registers")
    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}")
    for (rate, share), label in zip(
        results, ("sequential (4 connections, 1 in flight each)",
                  f"pipelined  (4 connections, {args.depth} in flight each)"), strict=True
    ):  # fmt: skip
        print(f"{label}: {rate:,.0f} reads/s, simulator CPU {share:.0%} of one core")
    print(f"simulator RSS: {idle / 1024:.1f} MiB after start, {busy / 1024:.1f} MiB after load")
    return 0


if __name__ == "__main__":
    sys.exit(main())
