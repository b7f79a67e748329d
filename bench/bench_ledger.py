"""Ledger throughput with durable commits: 10,000 meters, one poll cycle of 10,000 readings
stepped through the core and committed in ONE transaction (WAL, synchronous=FULL).

Run: ``.venv/bin/python bench/bench_ledger.py [--meters N] [--cycles C] [--dir PATH]``.
Prints the time of the core steps and of the commit per cycle, the core's time per reading
step, cycles per second and ledger updates per second. The target is a full cycle in under one second.

Then the same cycles as the gateway's core task runs them (``gateway.service``): batches of
``MAX_BATCH`` readings, each committed durably by the store's writer thread while the next
batch is stepped, at most one batch waiting behind the one committing. A cycle there ends
when its last batch is durable.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from gateway.collector import THRESHOLDS, tune_collector
from gateway.core.commands import Publish
from gateway.core.events import ReadingReceived
from gateway.core.meter_state import MeterState, enrol
from gateway.core.settings import MeterSettings
from gateway.core.step import step
from gateway.core.tariff import DayType, Tariff, TariffSchedule, TimeOfUsePricing, TouPeriod
from gateway.core_task import MAX_BATCH
from gateway.store import MeterRecord, MeterUpdate, OutboxRow, Store

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


def readings(
    states: dict[str, MeterState], cycle: int, now: datetime, part: slice = slice(None)
) -> list[MeterUpdate]:
    """Step every meter (or the ``part`` of them, in enrolment order) once through the
    core: a reading ``cycle`` poll cycles in."""
    updates = []
    meters = list(states.items())
    for n in range(len(meters))[part]:
        meter_id, state = meters[n]
        reading = ReadingReceived(meter_id, cycle * (200 + n % 300), now, power_w=800)
        new_state, commands = step(state, reading, now)
        states[meter_id] = new_state
        updates.append(MeterUpdate(new_state, commands, now))
    return updates


async def pipelined_cycle(
    store: Store, states: dict[str, MeterState], cycle: int, now: datetime
) -> int:
    """One poll cycle as the gateway's core task commits it; the number of batches."""
    committing: asyncio.Future[list[OutboxRow]] | None = None
    batches = 0
    for start in range(0, len(states), MAX_BATCH):
        updates = readings(states, cycle, now, slice(start, start + MAX_BATCH))
        if committing is not None:
            await committing  # at most one batch waits behind the one committing
        committing = asyncio.ensure_future(store.commit_cycle_async(updates, returning=False))
        batches += 1
    if committing is not None:
        await committing
    return batches


def serial_cycles(
    store: Store, states: dict[str, MeterState], cycles: range
) -> tuple[list[float], list[float], list[float]]:
    """Step every meter, then commit the cycle in one transaction; (core, CPU, commit) s."""
    step_times, step_cpu, commit_times = [], [], []
    for cycle in cycles:
        now = START + timedelta(minutes=15 * cycle)
        t0, c0 = time.perf_counter(), time.process_time()
        updates = readings(states, cycle, now)
        t1, c1 = time.perf_counter(), time.process_time()
        store.commit_cycle(updates, returning=False)  # as the gateway's core task
        t2 = time.perf_counter()
        step_times.append(t1 - t0)
        step_cpu.append(c1 - c0)
        commit_times.append(t2 - t1)
        print(
            f"cycle {cycle}: core {t1 - t0:.3f} s + commit {t2 - t1:.3f} s = {t2 - t0:.3f} s,"
            f" {sum(isinstance(c, Publish) for u in updates for c in u.commands)} outbox rows"
        )
    return step_times, step_cpu, commit_times


def enrol_all(store: Store, meters: int) -> dict[str, MeterState]:
    shared = settings()
    states: dict[str, MeterState] = {}
    for n in range(meters):
        meter_id = f"m{n:05d}"
        state = enrol(meter_id, shared, START, opening_balance=50_000)
        store.add_meter(
            MeterRecord(meter_id, f"bus{n % 40}", 1 + n % 247, "pe1", b"k" * 16), state, START
        )
        states[meter_id] = state
    return states


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--meters", type=int, default=10_000)
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where the store goes")
    args = parser.parse_args()
    n, c = args.meters, args.cycles
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        store = Store.open(Path(tmp) / "bench.db")
        began = time.perf_counter()
        states = enrol_all(store, n)
        print(f"enrolled {n} meters in {time.perf_counter() - began:.1f} s (one commit each)")
        serial_cycles(store, states, range(1))  # the first reading only sets baselines
        # The two collector settings take turns, so that both meet the same store (its
        # outbox grows by two rows per reading and is never drained here).
        default = gc.get_threshold()
        base: tuple[list[float], list[float], list[float]] = ([], [], [])
        tuned: tuple[list[float], list[float], list[float]] = ([], [], [])
        for cycle in range(1, 2 * c + 1):
            gateway = cycle % 2 == 0
            if gateway:
                tune_collector()  # as the gateway process does
            else:
                gc.set_threshold(*default)
            print(
                f"the gateway's collector thresholds {THRESHOLDS} (gateway/collector.py):"
                if gateway
                else f"baseline, CPython's default collector thresholds {default}:",
                end=" ",
            )
            for into, got in zip(
                tuned if gateway else base,
                serial_cycles(store, states, range(cycle, cycle + 1)),
                strict=True,
            ):
                into.extend(got)
        tune_collector()
        step_times, step_cpu, commit_times = tuned
        base_commit = base[2]
        piped = []
        for cycle in range(2 * c + 1, 3 * c + 1):
            now = START + timedelta(minutes=15 * cycle)
            t0 = time.perf_counter()
            batches = asyncio.run(pipelined_cycle(store, states, cycle, now))
            piped.append(time.perf_counter() - t0)
            print(
                f"cycle {cycle}: {batches} batches of up to {MAX_BATCH}, stepped while the"
                f" previous commits: {piped[-1]:.3f} s"
            )
        depth = store.outbox_depth()
        store.close()
    median = statistics.median
    total = median(a + b for a, b in zip(step_times, commit_times, strict=True))
    base_total = median(a + b for a, b in zip(base[0], base_commit, strict=True))
    print(
        f"median full cycle ({n} readings, durable, one transaction): {total:.3f} s"
        f" (core {median(step_times):.3f} s, commit {median(commit_times):.3f} s);"
        f" with CPython's default collector {base_total:.3f} s ({total / base_total:.2f}x)"
    )
    per_step = [t / n * 1e6 for t in step_times]
    print(
        f"core per reading step: {median(per_step):.1f} µs"
        f" (median; cycles {', '.join(f'{t:.1f}' for t in per_step)}),"
        f" CPU {median(step_cpu) / n * 1e6:.1f} µs"
    )
    print(f"cycles per second: {1 / total:.2f}")
    print(f"ledger updates per second: {n / total:,.0f}")
    print(f"commit only: {n / median(commit_times):,.0f} ledger updates per second")
    best = median(piped)
    print(
        f"median full cycle as the gateway commits it ({n} readings, durable,"
        f" batches of {MAX_BATCH} pipelined): {best:.3f} s, {n / best:,.0f}"
        f" ledger updates per second ({best / total:.2f}x the one-transaction cycle)"
    )
    print(f"outbox depth at the end: {depth}")
    print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()}, cpus: {os.cpu_count()}")


if __name__ == "__main__":
    main()
