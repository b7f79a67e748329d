"""SIGKILL a process that commits readings and top-ups to the store in a loop, at random moments, 50 times: after each restart the ledgers and the outbox hold exactly the committed cycles, nothing lost or doubled."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.core.commands import Command, Publish, TopUpDecision
from gateway.core.events import Event, ReadingReceived, TopUpAccepted
from gateway.core.meter_state import MeterState, enrol
from gateway.core.settings import MeterSettings
from gateway.core.step import step
from gateway.core.tariff import FlatPricing, Tariff, TariffSchedule
from gateway.store import MeterRecord, MeterUpdate, Store, TokenWindow

START = datetime(2026, 11, 2, tzinfo=UTC)
METERS = ("m0", "m1", "m2")
KILLS = 50
SETTINGS = MeterSettings(
    TariffSchedule.single(Tariff("GBP", FlatPricing(Decimal("31.7")), standing_charge_per_day=40)),
    max_balance=10_000_000,
)


@dataclass(frozen=True)
class Cycle:
    """Cycle ``index``: every meter gets the same kind of event in one commit."""

    index: int

    @property
    def now(self) -> datetime:
        return START + timedelta(minutes=self.index)

    @property
    def is_top_up(self) -> bool:
        return self.index % 5 == 4

    def event(self, meter_id: str) -> Event:
        if self.is_top_up:
            return TopUpAccepted(
                meter_id, 300, self.index, f"{meter_id}-tok-{self.index}", "keypad", self.now
            )
        return ReadingReceived(meter_id, 50 * self.index, self.now)

    def window(self) -> TokenWindow | None:
        return TokenWindow(0, self.index, self.index) if self.is_top_up else None


def fresh_states() -> dict[str, MeterState]:
    return {m: enrol(m, SETTINGS, START, opening_balance=1000) for m in METERS}


def run_cycle(
    states: dict[str, MeterState], cycle: Cycle
) -> tuple[dict[str, MeterState], dict[str, list[Command]]]:
    out, commands = {}, {}
    for meter_id, state in states.items():
        out[meter_id], commands[meter_id] = step(state, cycle.event(meter_id), cycle.now)
    return out, commands


def committed_cycles(store: Store) -> int:
    """How many cycles the store holds, from what they left: readings and tokens of m0."""
    rows = store.outbox_since("m0", 1)
    readings = sum(1 for r in rows if r.kind == "reading")
    tokens = sum(1 for r in rows if r.body.get("event") == "token_accepted")
    return readings + tokens


def child(path: Path) -> None:
    """Commit cycle after cycle; print each cycle's index once its commit returned."""
    store = Store.open(path)
    if not store.load_meters():
        for meter_id, state in fresh_states().items():
            store.add_meter(MeterRecord(meter_id, "bus0", 1, "pe1", b"k" * 16), state, START)
    states = {m.record.meter_id: m.state for m in store.load_meters()}
    index = committed_cycles(store)
    print(f"start {index}", flush=True)
    while True:
        cycle = Cycle(index)
        states, commands = run_cycle(states, cycle)
        store.commit_cycle(
            [MeterUpdate(states[m], commands[m], cycle.now, cycle.window()) for m in METERS]
        )
        print(index, flush=True)
        index += 1


@pytest.mark.reliability
@pytest.mark.timeout(120)
def test_sigkill_loses_and_doubles_nothing(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    rng = random.Random(20261128)
    replayed = fresh_states()
    expected_rows: dict[str, list[tuple[str, str]]] = {m: [] for m in METERS}
    replayed_cycles = in_flight = 0
    started = time.monotonic()
    for kill in range(KILLS):
        proc = subprocess.Popen(
            [sys.executable, __file__, str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("start"), first + (proc.stderr.read() if proc.stderr else "")
        assert int(first.split()[1]) == replayed_cycles
        acked = replayed_cycles - 1
        for _ in range(rng.randint(0, 12)):
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            acked = int(line)
        # a random moment within the next commits, not just after one returned
        deadline = time.monotonic() + rng.uniform(0, 0.03)
        while time.monotonic() < deadline:
            pass
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for line in proc.stdout.read().split():  # commits that returned before the kill
            acked = int(line)
        proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()
        with Store.open(path) as store:
            cycles = committed_cycles(store)
            # nothing acknowledged is lost; at most the one cycle in flight got in
            assert acked + 1 <= cycles <= acked + 2, (kill, acked, cycles)
            in_flight += cycles == acked + 2
            while replayed_cycles < cycles:
                cycle = Cycle(replayed_cycles)
                replayed, commands = run_cycle(replayed, cycle)
                for meter_id, meter_commands in commands.items():
                    expected_rows[meter_id] += [
                        (c.kind, json.dumps(c.body, sort_keys=True))
                        for c in meter_commands
                        if isinstance(c, Publish)
                    ]
                    for c in meter_commands:
                        assert not isinstance(c, TopUpDecision) or c.accepted
                replayed_cycles += 1
            loaded = {m.record.meter_id: m for m in store.load_meters()}
            for meter_id in METERS:
                state = loaded[meter_id].state
                assert state == replayed[meter_id], (kill, meter_id)
                assert state.ledger.conserved()
                rows = store.outbox_since(meter_id, 1)
                assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
                assert store.last_seq(meter_id) == len(rows)
                assert [
                    (r.kind, json.dumps(r.body, sort_keys=True)) for r in rows
                ] == expected_rows[meter_id]
                top_ups = [i for i in range(cycles) if Cycle(i).is_top_up]
                assert state.ledger.topups == 300 * len(top_ups)
                for i in top_ups[-3:]:
                    assert store.token_applied(meter_id, f"{meter_id}-tok-{i}")
                window = loaded[meter_id].token_window
                if top_ups:
                    assert window == TokenWindow(0, top_ups[-1], top_ups[-1])
    assert replayed_cycles > KILLS
    print(
        f"{KILLS} kills, {replayed_cycles} cycles, {in_flight} killed after commit before ack, "
        f"{time.monotonic() - started:.1f} s"
    )


if __name__ == "__main__":
    child(Path(sys.argv[1]))
