"""Store.commit_cycle alone: 10,000 meters, one cycle of 10,000 stepped readings committed
in ONE durable transaction (WAL, synchronous=FULL), repeated; optionally under cProfile.
Then broker acknowledgements written alone (no commit to ride in), with the store's
``synchronous=FULL`` and, as the baseline, ``NORMAL`` (no fsync), taking turns.

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
from gateway.core.meter_state import MeterState, enrol
from gateway.store import MeterRecord, Store
from gateway.store import acks as acks_module


def ack_flushes(store: Store, ids: list[int], size: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per flush of ``size`` acknowledgements alone, per ``synchronous`` mode:
    recorded at once, written by the writer thread (``ACK_FLUSH_ROWS`` set to ``size``)."""
    acks_module.ACK_FLUSH_ROWS = size
    writer = store._writer  # the bench sets the mode the store keeps at FULL
    times: dict[str, list[float]] = {"FULL": [], "NORMAL": []}
    for _ in range(rounds):
        for mode, into in times.items():
            writer.run(writer.db.execute, f"PRAGMA synchronous={mode}")
            part, ids[:] = ids[:size], ids[size:]
            t0 = time.perf_counter()
            store.mark_acked(part, START)
            writer.run(lambda: None)  # after the flush the ack queued
            into.append(time.perf_counter() - t0)
    writer.run(writer.db.execute, "PRAGMA synchronous=FULL")
    return times


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
        unacked = [r.id for r in store.outbox_pending(limit=100_000)]
        flushes = {
            size: ack_flushes(store, unacked, size, min(20, len(unacked) // (2 * size)))
            for size in (64, 1024)
        }
        store.close()
    print(
        f"median commit ({args.meters} updates, one durable transaction):"
        f" {statistics.median(times):.3f} s (range {min(times):.3f} to {max(times):.3f}),"
        f" {statistics.median(cpu):.3f} CPU-s"
    )
    for size, by_mode in flushes.items():
        if not by_mode["FULL"]:
            continue  # too few rows for this size
        full, normal = (statistics.median(by_mode[m]) * 1e3 for m in ("FULL", "NORMAL"))
        print(
            f"acks alone, {size} per flush (median of {len(by_mode['FULL'])}):"
            f" synchronous=FULL {full:.2f} ms, NORMAL {normal:.2f} ms, FULL costs"
            f" {full - normal:+.2f} ms ({full / normal:.2f}x)"
        )
    if prof is not None:
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
