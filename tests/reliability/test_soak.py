"""Soak: the gateway in this process with many meters at accelerated time, random bus faults and a live broker; after a warm-up, memory, open file descriptors, asyncio tasks and the outbox stay flat to the end (CI: 60 s and 100 meters; PREPAID_EDGE_SOAK=1: one hour and 1,000 meters)."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.config import GatewayConfig
from meter_sim.clock import ScaledClock
from meter_sim.simulator import Simulator
from tests.integration.helpers import running_gateway, sim_start
from tests.reliability.harness import env_count
from tests.support.gateway_env import GatewayWorld, meter_id
from tests.support.gateway_process import first_readings
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import TestClient

pytestmark = [pytest.mark.asyncio, pytest.mark.broker, pytest.mark.reliability]

SPEED = 60.0
METERS = env_count("PREPAID_EDGE_SOAK_METERS", 100, 1000)
SECONDS = env_count("PREPAID_EDGE_SOAK_SECONDS", 60, 3600)
WARMUP_S = min(15, SECONDS // 4)
#: allowed growth from the end of the warm-up to the end
RSS_GROWTH_KB = 20_000


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class _LevelCounter(logging.Handler):
    """Counts the gateway's and the simulator's log records by level and keeps none.
    pytest's log capture keeps every record of a test, each with its exception and that
    exception's frames: an hour of 1 % faults on 1,000 meters made it about 150 MB of the
    test process's memory (the first one-hour run failed on it), not the gateway's."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[record.levelname] += 1


async def _empty(headend: TestClient, received: list[int]) -> None:
    while True:
        while not headend.messages.empty():
            headend.messages.get_nowait()
            received[0] += 1
        await asyncio.sleep(0.2)


#: tasks that exist per meter while it has something in hand (a display write, a relay
#: being driven); at most one of each per meter, and as many as the meters' slowness
#: makes them at the moment of a sample, so they are bounded by the meter count
PER_METER_KINDS = ("write", "relay")


def _task_kind(task: asyncio.Task[object]) -> str:
    """`poll:tcp-1:3` -> `poll`, `write:meter-0001` -> `write`, asyncio's `Task-17` -> `Task`."""
    return task.get_name().split(":")[0].split("-")[0]


@dataclasses.dataclass(frozen=True)
class Sample:
    rss_kb: int
    fds: int
    #: the fixed tasks (pollers, core, drain, link, the test's own): must stay flat
    tasks: int
    per_meter_tasks: dict[str, int]
    #: the most tasks of one per-meter kind seen for one meter (names carry the meter)
    most_per_meter: int
    outbox: int


async def _sample(depth: Callable[[], int]) -> Sample:
    """Memory and fds now; per task kind and for the outbox, the lowest count over one
    second (a poll cycle in flight holds rows not yet acknowledged: a leak raises the
    floor). Per-meter tasks are counted apart from the rest: their number follows how many
    meters are slow at the moment, so only the fixed tasks must stay flat."""
    fixed, per_meter, outbox = [], collections.Counter[str](), []
    most = 0
    for k in range(20):
        tasks = asyncio.all_tasks()
        kinds = collections.Counter(_task_kind(t) for t in tasks)
        names = collections.Counter(t.get_name() for t in tasks if _task_kind(t) in PER_METER_KINDS)
        most = max(most, *names.values(), 0)
        fixed.append(sum(n for kind, n in kinds.items() if kind not in PER_METER_KINDS))
        for kind in PER_METER_KINDS:
            per_meter[kind] = kinds[kind] if k == 0 else min(per_meter[kind], kinds[kind])
        outbox.append(depth())
        await asyncio.sleep(0.05)
    return Sample(
        rss_kb=_rss_kb(),
        fds=len(os.listdir("/proc/self/fd")),
        tasks=min(fixed),
        per_meter_tasks=dict(per_meter),
        most_per_meter=most,
        outbox=min(outbox),
    )


@pytest.mark.timeout(SECONDS + 600)
async def test_soak_stays_flat(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs = _LevelCounter()
    for name in ("gateway", "meter_sim"):
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "propagate", False)  # not into pytest's capture
        monkeypatch.setattr(logger, "handlers", [logs])
    world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
    units = range(1, METERS + 1)
    start_f, _ = sim_start(SPEED)
    async with Simulator.start(meters=METERS, seed=8, clock=ScaledClock(SPEED, start_f)) as sim:
        # 247 unit ids per Modbus TCP port: one bus per simulator port.
        ports = {address: f"tcp-{k + 1}" for k, address in enumerate(sim.tcp_addresses)}

        def place(n: int) -> tuple[str, int]:
            address, unit = sim.tcp_endpoint_of(n)
            return ports[address], unit

        world.enrol(units, opening_balance=10_000_000, place=place)
        data = world.config_data(
            tcp=sim.tcp_address,
            broker=(mosquitto.host, mosquitto.port),
            speed=SPEED,
            start=datetime.fromtimestamp(sim.clock.now(), UTC),
            interval=1.0,
            timeout=0.5,
        )
        data["buses"] = [
            {
                "name": name,
                "kind": "tcp",
                "host": host,
                "port": port,
                "timeout_s": 0.5,
                "retries": 0,
            }
            for (host, port), name in ports.items()
        ]
        config = GatewayConfig.model_validate(data)
        with TestClient(mosquitto, "soak-headend") as headend:
            headend.subscribe("prepaid/v1/gw-test/#")
            async with running_gateway(config) as runner:
                gw = runner.gateway
                await first_readings(gw, [meter_id(METERS)], within=60)
                for kind in ("exception", "slow", "timeout"):
                    sim.inject_fault("all", kind, probability=0.01, delay=0.2)
                # The headend here only proves delivery goes on; its queue is the test's
                # own memory, emptied all along so it does not count as the gateway's.
                received = [0]
                emptying = asyncio.create_task(_empty(headend, received))
                start = await _sample(gw.store.outbox_depth)
                await asyncio.sleep(WARMUP_S)  # the soak is time passing, on purpose
                warm = await _sample(gw.store.outbox_depth)
                samples = [warm]
                for _ in range(4):
                    before = received[0]
                    await asyncio.sleep((SECONDS - WARMUP_S) / 4)
                    assert received[0] > before, "the headend stopped receiving"
                    samples.append(await _sample(gw.store.outbox_depth))
                emptying.cancel()
                sim.clear_faults("all")
    end = samples[-1]
    print(
        f"soak {SECONDS} s, {METERS} meters: start {start}, warm {warm}, end {end};"
        f" samples {samples}; log records {dict(logs.counts)}"
    )
    assert end.rss_kb - warm.rss_kb < RSS_GROWTH_KB, samples
    assert end.fds <= warm.fds + 2, samples
    assert end.tasks <= warm.tasks + 2, samples
    assert all(n <= METERS for n in end.per_meter_tasks.values()), samples
    assert all(s.most_per_meter <= 1 for s in samples), samples  # one of each kind per meter
    assert end.outbox <= warm.outbox + METERS, samples
