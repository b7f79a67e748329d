"""The gateway's poll path alone: Modbus TCP requests, reply checks, decoding, snapshots,
the ``ReadingReceived`` event and scheduling, with no core, store or MQTT behind it.

The simulator (``python -m meter_sim serve``, 247 meters per TCP port) runs in its own
process; the poll path runs in a child process of this script (its CPU its own): one
``TcpPort`` and one ``BusPoller`` per simulator port, every PE-1 meter always due, and
a sink in place of the core that builds the event the gateway queues per reading
(``Gateway._on_reading``: ``ReadingReceived``, plus ``KeypadEntry`` when flagged) and
counts it. Beside it, in the same run against the same simulator: a bare pymodbus
``AsyncModbusTcpClient`` loop reading the same block (input registers 1..22), one client
per port with one request in flight (what that client offers). Plain script, run on
purpose, never collected by pytest:

    .venv/bin/python bench/bench_poll_path.py [--meters 1000] [--concurrency 16]
        [--window 8] [--runs 3] [--profile /tmp/poll.prof]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import pstats
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pymodbus.client import AsyncModbusTcpClient

ROOT = Path(__file__).resolve().parent.parent
if not os.environ.get("PYTHONPATH"):  # PYTHONPATH=/other/checkout measures that code
    sys.path.insert(0, str(ROOT))

from gateway.core.events import ReadingReceived  # noqa: E402
from gateway.core.token_intake import KeypadEntry  # noqa: E402
from gateway.meter_io import MeterIO, MeterSnapshot  # noqa: E402
from gateway.modbus_port import MeterIOError, TcpPort  # noqa: E402
from gateway.poller import BusPoller, PolledMeter  # noqa: E402
from protocol.regmap import load_map  # noqa: E402

PY = sys.executable
SEED = ("--seed", "1")
UNITS_PER_PORT = 247
#: The PE-1 block the gateway reads: input registers 1..22 (MeterIO.plan).
BLOCK_START, BLOCK_COUNT = 1, 22


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of another process (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_sim(meters: int) -> tuple[subprocess.Popen[str], list[tuple[str, int]]]:
    """``meter_sim serve`` in its own process and the TCP addresses it prints."""
    proc = subprocess.Popen(
        [PY, "-m", "meter_sim", "serve", "--meters", str(meters), "--tcp", "127.0.0.1:0", *SEED],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    tcp: list[tuple[str, int]] = []
    for line in proc.stdout:
        word, _, rest = line.partition(" ")
        if word == "modbus-tcp":
            host, port = rest.split()[0].rsplit(":", 1)
            tcp.append((host, int(port)))
        elif word == "ready:":
            return proc, tcp
    raise RuntimeError(f"simulator exited with {proc.wait()}")


def stop_sim(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_child(role: str, params: dict[str, Any]) -> dict[str, Any]:
    """This script in a fresh process (its CPU its own); its RESULT line."""
    out = subprocess.run(
        [PY, __file__, "--role", role, "--params", json.dumps(params)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[7:])
            return result
    raise RuntimeError(f"{role} failed ({out.returncode}):\n{out.stderr[-3000:]}")


def units_per_port(meters: int, ports: int) -> list[int]:
    return [min(UNITS_PER_PORT, meters - k * UNITS_PER_PORT) for k in range(ports)]


# ---------------------------------------------------------------------- the two parties


async def _role_poll(p: dict[str, Any]) -> dict[str, Any]:
    """Pollers and ports as the gateway builds them; a counting sink instead of the core."""
    readings = failures = keypad = 0
    events: list[object] = []

    async def on_reading(polled: PolledMeter, snap: MeterSnapshot) -> None:
        # What Gateway._on_reading builds from a snapshot (minus the store and runtime).
        nonlocal readings, keypad
        now = datetime.now(UTC)
        flags = snap.flags
        event = ReadingReceived(
            polled.meter_id,
            snap.energy_import_wh,
            now,
            power_w=snap.power_w,
            relay_closed=snap.relay_closed,
            cover_open="cover_open" in flags,
            magnetic_tamper="magnetic_tamper" in flags,
            load_limit_tripped="load_limit_tripped" in flags,
            reverse_energy="reverse_energy" in flags,
            button_pressed="reconnect_button" in flags,
            voltage_v=snap.voltage_v,
            relay_unreadable=False,
            resolution_wh=snap.resolution_wh,
            measured=snap.measured,
        )
        readings += 1
        if (
            "keypad_pending" in flags
            and snap.keypad_seq is not None
            and snap.keypad_digits is not None
        ):
            keypad += 1
            events.append(KeypadEntry(polled.meter_id, snap.keypad_seq, snap.keypad_digits, now))
        if readings == 1:
            events.append(event)  # keep one, so the work is not optimised away in spirit

    async def on_failure(polled: PolledMeter, error: MeterIOError) -> None:
        nonlocal failures
        failures += 1

    io = MeterIO(load_map("pe1"))
    pollers: list[BusPoller] = []
    ports: list[TcpPort] = []
    n = 0
    for k, ((host, port), units) in enumerate(
        zip(p["tcp"], units_per_port(p["meters"], len(p["tcp"])), strict=True)
    ):
        tcp = TcpPort(f"tcp-{k}", host, port, concurrency=p["concurrency"], timeout=2.0)
        poller = BusPoller(f"tcp-{k}", tcp, on_reading, on_failure, concurrency=p["concurrency"])
        for unit in range(1, units + 1):
            n += 1
            poller.add(PolledMeter(f"PE1-{n:06d}", unit, io, 0.01))
        ports.append(tcp)
        pollers.append(poller)
    tasks = [asyncio.create_task(poller.run()) for poller in pollers]
    await asyncio.sleep(p["warmup"])
    profiler = cProfile.Profile() if p.get("profile") else None
    if profiler is not None:
        profiler.enable()
    r0, c0, t0 = readings, own_cpu(), time.monotonic()
    await asyncio.sleep(p["window"])
    r1, c1, t1 = readings, own_cpu(), time.monotonic()
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(p["profile"])
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for tcp in ports:
        await tcp.close()
    return {
        "readings": r1 - r0,
        "seconds": t1 - t0,
        "cpu": c1 - c0,
        "failures": failures,
        "keypad": keypad,
    }


async def _role_pymodbus(p: dict[str, Any]) -> dict[str, Any]:
    """A bare pymodbus loop: one client per simulator port, each reading its meters
    round-robin, one request in flight per connection (what pymodbus's client offers)."""
    count = 0

    async def loop(host: str, port: int, units: int, stop: asyncio.Event) -> None:
        nonlocal count
        client = AsyncModbusTcpClient(host, port=port, timeout=2, retries=0)
        await client.connect()
        unit = 0
        try:
            while not stop.is_set():
                unit = unit % units + 1
                rr = await client.read_input_registers(
                    BLOCK_START, count=BLOCK_COUNT, device_id=unit
                )
                if not rr.isError() and len(rr.registers) == BLOCK_COUNT:
                    count += 1
        finally:
            client.close()

    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(loop(host, port, units, stop))
        for (host, port), units in zip(
            p["tcp"], units_per_port(p["meters"], len(p["tcp"])), strict=True
        )
    ]
    await asyncio.sleep(p["warmup"])
    r0, c0, t0 = count, own_cpu(), time.monotonic()
    await asyncio.sleep(p["window"])
    r1, c1, t1 = count, own_cpu(), time.monotonic()
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"readings": r1 - r0, "seconds": t1 - t0, "cpu": c1 - c0}


# ---------------------------------------------------------------------- report


def per_1000(r: dict[str, Any]) -> float:
    return float(1000 * r["cpu"] / r["readings"]) if r["readings"] else float("nan")


def line(name: str, r: dict[str, Any], sim_cpu: float) -> None:
    rate = r["readings"] / r["seconds"]
    print(
        f"  {name:<34} {rate:>8,.0f} readings/s  {per_1000(r):.3f} CPU-s/1000"
        f"  ({r['readings']} in {r['seconds']:.1f} s; simulator {sim_cpu:.1f} CPU-s)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight per port")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--window", type=float, default=8.0)
    parser.add_argument("--runs", type=int, default=1, help="poll-path/pymodbus pairs")
    parser.add_argument("--no-baseline", action="store_true", help="skip the pymodbus loop")
    parser.add_argument("--profile", default="", metavar="FILE", help="cProfile the poll window")
    args = parser.parse_args()
    if args.role:
        roles = {"poll": _role_poll, "pymodbus": _role_pymodbus}
        print("RESULT " + json.dumps(asyncio.run(roles[args.role](json.loads(args.params)))))
        return
    print(
        f"bench_poll_path: {args.meters} PE-1 meters, {args.concurrency} in flight per port, "
        f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}, poll path from "
        f"{Path(sys.modules['gateway.poller'].__file__ or '').parent.parent}",
        flush=True,
    )
    proc, tcp = start_sim(args.meters)
    ratios: list[float] = []
    try:
        params = {
            "tcp": tcp,
            "meters": args.meters,
            "concurrency": args.concurrency,
            "warmup": args.warmup,
            "window": args.window,
        }
        for run in range(args.runs):
            profile = args.profile if run == 0 else ""
            s0 = cpu_seconds(proc.pid)
            g = run_child("poll", {**params, "profile": profile})
            s1 = cpu_seconds(proc.pid)
            line("poll path (TcpPort, BusPoller)", g, s1 - s0)
            if g["failures"]:
                print(f"    poll failures: {g['failures']}")
            if args.no_baseline:
                continue
            b = run_child("pymodbus", params)
            line("bare pymodbus AsyncModbusTcpClient", b, cpu_seconds(proc.pid) - s1)
            ratios.append(per_1000(g) / per_1000(b))
            print(
                f"    poll path / pymodbus: {(g['readings'] / g['seconds']) / (b['readings'] / b['seconds']):.2f}x"
                f" readings/s, {ratios[-1]:.2f}x CPU per reading",
                flush=True,
            )
    finally:
        stop_sim(proc)
    if args.profile:
        with contextlib.redirect_stdout(sys.stdout):
            stats = pstats.Stats(args.profile)
            stats.sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
