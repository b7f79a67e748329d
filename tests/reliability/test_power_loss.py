"""Power loss on the store: the database and its WAL, frozen at random moments while a gateway process writes (and with the WAL's unsynced tail torn off at a random byte), open consistent, with every transaction whole (ledger, token and event together; outbox sequences gap-free) or are refused with a clear StoreError."""

from __future__ import annotations

import asyncio
import random
import shutil
import signal
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.store import Store, StoreError
from meter_sim.clock import ScaledClock
from meter_sim.simulator import Simulator
from tests.integration.helpers import sim_start
from tests.reliability.harness import detail, env_count, kill9, start_gateway
from tests.support.gateway_env import GatewayWorld, meter_id

pytestmark = [pytest.mark.asyncio, pytest.mark.reliability]

SPEED = 60.0
METERS = 20
COPIES = env_count("PREPAID_EDGE_POWER_CUTS", 40, 300)


async def test_power_cut_copies_open_consistent_or_refused(tmp_path: Path) -> None:
    rng = random.Random(2)
    world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
    units = range(1, METERS + 1)
    world.enrol(units, opening_balance=400)
    start_f, _ = sim_start(SPEED)
    outcomes = {"consistent": 0, "refused": 0}
    torn = 0
    async with Simulator.start(meters=METERS, seed=2, clock=ScaledClock(SPEED, start_f)) as sim:
        for unit in units:
            sim.set_load(unit, rng.choice([1000, 3000, 6000]))
        config = world.write_config(
            tcp=sim.tcp_address, speed=SPEED, start=datetime.fromtimestamp(sim.clock.now(), UTC)
        )
        proc = start_gateway(config, tmp_path / "gateway.log")
        try:
            for n in range(COPIES):
                await asyncio.sleep(rng.uniform(0.05, 0.4))  # a random moment, on purpose
                unit = rng.randint(1, METERS)
                if not sim.state(unit)["keypad_pending"]:
                    sim.keypad(unit, world.keypad_token(unit, rng.choice([300, 700])))
                copy = tmp_path / f"cut-{n}" / "gateway.db"
                torn += _power_cut(proc, world.store_path, copy, rng if n % 2 else None)
        finally:
            kill9(proc)
    for n in range(COPIES):
        copy = tmp_path / f"cut-{n}" / "gateway.db"
        try:
            store = Store.open(copy)
        except StoreError as exc:
            assert str(exc), "a refusal must say why"
            outcomes["refused"] += 1
            continue
        with store:
            _check_whole(store, n)
        outcomes["consistent"] += 1
    print(f"power loss: {COPIES} copies ({torn} with a torn WAL): {outcomes}")
    assert outcomes["consistent"] > 0


def _power_cut(
    proc: subprocess.Popen[bytes], src: Path, copy: Path, tear: random.Random | None
) -> int:
    """Freeze the writer so the db and WAL copies are one instant of the disk, resume it,
    and with ``tear`` cut the copied WAL at a random byte (what was not yet synced is
    lost). Blocking on purpose: the copy must be quick. 1 if the WAL was torn."""
    copy.parent.mkdir()
    proc.send_signal(signal.SIGSTOP)
    try:
        for suffix in ("", "-wal"):
            source = Path(str(src) + suffix)
            if source.exists():
                shutil.copyfile(source, Path(str(copy) + suffix))
    finally:
        proc.send_signal(signal.SIGCONT)
    wal = Path(str(copy) + "-wal")
    if tear is None or not wal.exists() or wal.stat().st_size <= 32:
        return 0
    with wal.open("r+b") as f:
        f.truncate(tear.randint(32, wal.stat().st_size))
    return 1


def _check_whole(store: Store, n: int) -> None:
    for stored in store.load_meters():
        mid = stored.record.meter_id
        ledger = stored.state.ledger
        assert ledger.conserved(), (n, mid)
        accepted = [e for e in store.events(mid) if e.get("event") == "token_accepted"]
        amounts = sum(detail(e, "amount") for e in accepted)
        assert ledger.topups == amounts, (n, mid, ledger.topups, amounts)
        counters = {detail(e, "counter") for e in accepted}
        window = stored.token_window
        highest = window.highest if window is not None else -1
        assert (max(counters) if counters else -1) <= highest or not counters, (n, mid)
        seqs = [row.seq for row in store.outbox_since(mid, 0)]
        assert seqs == list(range(1, len(seqs) + 1)), (n, mid, seqs[:5])
        assert store.last_seq(mid) == (seqs[-1] if seqs else 0), (n, mid)
    assert meter_id(1) in {m.record.meter_id for m in store.load_meters()}
