"""Ledger throughput with durable commits: 10,000 meters, one poll cycle of 10,000 readings
stepped through the core and committed in ONE transaction (WAL, synchronous=FULL).

Run: ``.venv/bin/python bench/bench_ledger.py [--meters N] [--cycles C] [--dir PATH]``.
Prints the time of the core steps and of the commit per cycle, the core's time per reading
step, cycles per second and ledger updates per second. The target is a full cycle in under one second.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from gateway.core.driver import MeterState, enrol, step
from gateway.core.events import ReadingReceived
from gateway.core.settings import MeterSettings
from gateway.core.tariff import DayType, Tariff, TariffSchedule, TimeOfUsePricing, TouPeriod
from gateway.store import MeterRecord, MeterUpdate, Store

START = datetime(2026, 11, 2, tzinfo=UTC)


def settings() -> MeterSettings:
    night = TouPeriod(
        frozenset(DayType),
        datetime.min.time(),
        datetime.min.time().replace(hour=7),
        Decimal("12.5"),
    )
    tariff = Tariff("GBP", TimeOfUsePricing((night,), Decimal("28.34")), standing_charge_per_day=53)
    return MeterSettings(TariffSchedule.single(tariff), max_balance=100_000_000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--meters", type=int, default=10_000)
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where the store goes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "bench.db"
        store = Store.open(path)
        shared = settings()
        states: dict[str, MeterState] = {}
        began = time.perf_counter()
        for n in range(args.meters):
            meter_id = f"m{n:05d}"
            state = enrol(meter_id, shared, START, opening_balance=50_000)
            store.add_meter(
                MeterRecord(meter_id, f"bus{n % 40}", 1 + n % 247, "pe1", b"k" * 16), state, START
            )
            states[meter_id] = state
        print(
            f"enrolled {args.meters} meters in {time.perf_counter() - began:.1f} s (one commit each)"
        )
        step_times, step_cpu, commit_times, totals = [], [], [], []
        for cycle in range(args.cycles + 1):
            now = START + timedelta(minutes=15 * cycle)
            t0, c0 = time.perf_counter(), time.process_time()
            updates = []
            for n, (meter_id, state) in enumerate(states.items()):
                reading = ReadingReceived(meter_id, cycle * (200 + n % 300), now, power_w=800)
                new_state, commands = step(state, reading, now)
                states[meter_id] = new_state
                updates.append(MeterUpdate(new_state, commands, now))
            t1, c1 = time.perf_counter(), time.process_time()
            rows = store.commit_cycle(updates)
            t2 = time.perf_counter()
            if cycle == 0:
                print(f"baseline cycle: {len(rows)} outbox rows, {t2 - t0:.3f} s")
                continue
            step_times.append(t1 - t0)
            step_cpu.append(c1 - c0)
            commit_times.append(t2 - t1)
            totals.append(t2 - t0)
            print(
                f"cycle {cycle}: core {t1 - t0:.3f} s + commit {t2 - t1:.3f} s = {t2 - t0:.3f} s,"
                f" {len(rows)} outbox rows"
            )
        depth = store.outbox_depth()
        store.close()
    total = statistics.median(totals)
    print(
        f"median full cycle ({args.meters} readings, durable, one transaction): {total:.3f} s"
        f" (core {statistics.median(step_times):.3f} s, commit {statistics.median(commit_times):.3f} s)"
    )
    per_step = [t / args.meters * 1e6 for t in step_times]
    print(
        f"core per reading step: {statistics.median(per_step):.1f} µs"
        f" (median; cycles {', '.join(f'{t:.1f}' for t in per_step)}),"
        f" CPU {statistics.median(step_cpu) / args.meters * 1e6:.1f} µs"
    )
    print(f"cycles per second: {1 / total:.2f}")
    print(f"ledger updates per second: {args.meters / total:,.0f}")
    print(
        f"commit only: {args.meters / statistics.median(commit_times):,.0f} ledger updates per second"
    )
    print(f"outbox depth at the end: {depth}")
    print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()}, cpus: {os.cpu_count()}")


if __name__ == "__main__":
    main()
