"""A mixed gateway (issue 21): 500 PE-1 meters over Modbus TCP beside 2 DL/T 645 buses of
32 meters each (RTU over TCP at 9,600 baud, the simulator emulating wire time), against
the same 500 Modbus meters alone and the DL/T 645 buses alone, in the same run, runs
alternating (A B C A B C ...).

Every party runs in its own process (the simulators, Mosquitto, the gateway), as in
bench/bench_gateway.py, whose helpers this reuses. The Modbus figures are counted from the
Modbus meters' own polls (successful reads in the window), so the DL/T 645 readings do
not flatter the mixed run; the CPU is the whole gateway process's. Plain script, run on
purpose:

    .venv/bin/python -m bench.bench_dlt645_mixed [--pairs 3] [--window 10] [--warmup 3]

Target: every Modbus figure of the mixed run within 10% of the Modbus-only run's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.bench_gateway import (
    PY,
    ROOT,
    broker,
    config_data,
    enrol_store,
    own_cpu,
    per_1000,
    start_sim,
    tcp_buses,
)
from gateway.clock import GatewayClock
from gateway.config import GatewayConfig
from gateway.core.meter_state import enrol
from gateway.dlt645_io import control_secret
from gateway.runner import Runner
from gateway.store import MeterRecord, Store
from protocol.tokens.keys import derive_meter_key
from tests.support.gateway_env import VENDING_KEY, fast_settings

MODBUS_METERS = 500
DLT645_BUSES, DLT645_METERS = 2, 32
BAUD = 9600


def _settings() -> Any:
    return fast_settings(price_per_kwh="1", max_balance=10_000_000)


def enrol_dlt645(path: Path, buses: int, meters: int) -> None:
    """DL/T 645 meters ``DLT-b-n`` at address n of bus ``dlt-b``."""
    now = datetime.now(UTC)
    secret = control_secret("02000000", "00000001")
    with Store.open(path) as store:
        for b in range(buses):
            for n in range(1, meters + 1):
                mid = f"DLT-{b}-{n:03d}"
                key = derive_meter_key(VENDING_KEY, mid, 0).secret
                state = enrol(mid, _settings(), now, opening_balance=5_000_000)
                record = MeterRecord(
                    mid, f"dlt-{b}", n, "dlt645_single_phase", key, 0, control_secret=secret
                )
                store.add_meter(record, state, now)


def dlt645_bus(name: str, address: tuple[str, int]) -> dict[str, Any]:
    host, port = address
    return {
        "name": name,
        "kind": "rtu",
        "protocol": "dlt645",
        "device": f"socket://{host}:{port}",
        "baud": BAUD,
        "parity": "E",
        "timeout_s": 0.5,
        "retries": 0,
        # energy and status only, the reading the line figures of docs/benchmarks.md are
        # for (bench_dlt645_rtu --measured prices the measured points)
        "dlt645": {"measured": []},
    }


# ---------------------------------------------------------------------- the child


async def _role_gateway(p: dict[str, Any]) -> dict[str, Any]:
    """The whole gateway for a window: Modbus and DL/T 645 readings counted apart."""
    config = GatewayConfig.model_validate(p["config"])
    store = Store.open(config.store)
    runner = Runner(config, clock=GatewayClock(1.0, None).now)
    task = asyncio.create_task(runner.run(store))
    await asyncio.wait_for(runner.started.wait(), 60)
    gw = runner.gateway

    def reads() -> tuple[int, int]:
        modbus = dlt645 = 0
        for rt in gw.meters.values():
            ok = rt.polled.polls - rt.polled.failures
            if rt.stored.record.bus.startswith("dlt-"):
                dlt645 += ok
            else:
                modbus += ok
        return modbus, dlt645

    try:
        await asyncio.sleep(p["warmup"])
        (m0, d0), c0, t0 = reads(), own_cpu(), time.monotonic()
        await asyncio.sleep(p["window"])
        (m1, d1), c1, t1 = reads(), own_cpu(), time.monotonic()
        return {
            "modbus": m1 - m0,
            "dlt645": d1 - d0,
            "cpu": c1 - c0,
            "seconds": t1 - t0,
            "failures": gw.counters.poll_failures,
        }
    finally:
        runner.stop.set()
        await asyncio.wait_for(task, 30)
        store.close()


def run_child(params: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        [PY, "-m", "bench.bench_dlt645_mixed", "--role", json.dumps(params)],
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
    raise RuntimeError(f"gateway child failed ({out.returncode}):\n{out.stderr[-3000:]}")


# ---------------------------------------------------------------------- the parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=16)
    a = parser.parse_args()
    if a.role:
        print("RESULT " + json.dumps(asyncio.run(_role_gateway(json.loads(a.role)))), flush=True)
        return
    print(f"load average before: {os.getloadavg()}")
    work = Path(tempfile.mkdtemp(prefix="bench-dlt645-mixed-"))
    modbus = start_sim("--meters", str(MODBUS_METERS), "--tcp", "127.0.0.1:0", "--seed", "1")
    dlt645_args = ["--protocol", "dlt645", "--meters", str(DLT645_METERS)]
    dlt645_args += ["--rtu-tcp", "127.0.0.1:0", "--baud", str(BAUD)]
    sims = [start_sim(*dlt645_args, "--seed", str(2 + b)) for b in range(DLT645_BUSES)]
    try:
        with broker(work / "mosquitto") as mosq:
            tcp = tcp_buses(modbus.tcp, a.concurrency)
            names = [b["name"] for b in tcp]
            only, mixed = work / "only.db", work / "mixed.db"
            for path in (only, mixed):
                enrol_store(
                    path, MODBUS_METERS, bus_of=names, opening_balance=5_000_000,
                    settings=_settings(),
                )  # fmt: skip
            enrol_dlt645(mixed, DLT645_BUSES, DLT645_METERS)
            alone = work / "dlt645.db"
            enrol_dlt645(alone, DLT645_BUSES, DLT645_METERS)
            dlt = [dlt645_bus(f"dlt-{b}", s.rtu_tcp or ("", 0)) for b, s in enumerate(sims)]
            configs = {
                "modbus only": config_data(only, tcp, mosq.port, interval=0.01),
                "mixed": config_data(mixed, tcp + dlt, mosq.port, interval=0.01),
                "dlt645 only": config_data(alone, dlt, mosq.port, interval=0.01),
            }
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
            for pair in range(a.pairs):
                for name, cfg in configs.items():
                    r = run_child({"config": cfg, "warmup": a.warmup, "window": a.window})
                    runs[name].append(r)
                    print(
                        f"  pair {pair + 1} {name:<11} {r['modbus'] / r['seconds']:8,.0f} Modbus "
                        f"readings/s  {per_1000(r['cpu'], r['modbus']):6.3f} CPU-s/1000  "
                        f"DL/T 645 {r['dlt645'] / r['seconds']:5.1f} readings/s  "
                        f"failures {r['failures']}",
                        flush=True,
                    )
    finally:
        modbus.stop()
        for s in sims:
            s.stop()
    with_modbus = {n: rs for n, rs in runs.items() if n != "dlt645 only"}
    rate = {
        n: statistics.median(r["modbus"] / r["seconds"] for r in rs)
        for n, rs in with_modbus.items()
    }
    cpu = {
        n: statistics.median(per_1000(r["cpu"], r["modbus"]) for r in rs)
        for n, rs in with_modbus.items()
    }
    dlt_rate = statistics.median(r["dlt645"] / r["seconds"] for r in runs["mixed"])
    dlt_alone = statistics.median(r["dlt645"] / r["seconds"] for r in runs["dlt645 only"])
    print(f"medians of {a.pairs} pairs ({a.window:g} s windows):")
    print(f"  Modbus readings/s: only {rate['modbus only']:,.0f}, mixed {rate['mixed']:,.0f} "
          f"({rate['mixed'] / rate['modbus only'] - 1:+.1%})")  # fmt: skip
    print(f"  CPU-s per 1000 Modbus readings: only {cpu['modbus only']:.3f}, mixed "
          f"{cpu['mixed']:.3f} ({cpu['mixed'] / cpu['modbus only'] - 1:+.1%})")  # fmt: skip
    print(
        f"  DL/T 645 readings/s (2 buses x 32 at {BAUD} baud): mixed {dlt_rate:.1f}, "
        f"alone {dlt_alone:.1f}"
    )
    print(f"load average after: {os.getloadavg()}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
