"""Store.commit_cycle alone: 10,000 meters, one cycle of 10,000 stepped readings committed
in ONE durable transaction (WAL, synchronous=FULL), repeated; optionally under cProfile.

Run: ``.venv/bin/python -m bench.bench_store_commit [--meters N] [--cycles C] [--profile]``.
Prints the commit time per cycle and the median; the steps are done before timing.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from bench.bench_ledger import START, readings, settings
from gateway.core.driver import MeterState, enrol
from gateway.store import MeterRecord, Store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--meters", type=int, default=10_000)
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the commit, run on this thread"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        store = Store.open(Path(tmp) / "bench.db")
        shared = settings()
        states: dict[str, MeterState] = {}
        enrolments = []
        for n in range(args.meters):
            meter_id = f"m{n:05d}"
            states[meter_id] = enrol(meter_id, shared, START, opening_balance=50_000)
            enrolments.append(
                (
                    MeterRecord(meter_id, f"bus{n % 40}", 1 + n % 247, "pe1", b"k" * 16),
                    states[meter_id],
                )
            )
        store.add_meters(enrolments, START)
        prof = cProfile.Profile() if args.profile else None
        times: list[float] = []
        cpu: list[float] = []
        for cycle in range(args.cycles + 1):
            now = START + timedelta(minutes=15 * cycle)
            updates = readings(states, cycle, now)
            if prof is not None and cycle:
                prof.enable()
            t0, c0 = time.perf_counter(), time.process_time()
            # cProfile sees one thread only: profile the writer's work on this one
            commit = getattr(store, "_commit", None) if prof is not None else None
            rows = commit(updates) if commit is not None else store.commit_cycle(updates)
            t1, c1 = time.perf_counter(), time.process_time()
            if prof is not None:
                prof.disable()
            if cycle:
                times.append(t1 - t0)
                cpu.append(c1 - c0)
                print(
                    f"cycle {cycle}: commit {t1 - t0:.3f} s ({c1 - c0:.3f} CPU-s),"
                    f" {len(rows)} outbox rows"
                )
        store.close()
    print(
        f"median commit ({args.meters} updates, one durable transaction):"
        f" {statistics.median(times):.3f} s (range {min(times):.3f} to {max(times):.3f}),"
        f" {statistics.median(cpu):.3f} CPU-s"
    )
    if prof is not None:
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
