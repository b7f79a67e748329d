"""Helpers for whole-gateway tests: run the gateway in-process, wait for conditions."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from gateway.clock import GatewayClock
from gateway.config import GatewayConfig
from gateway.runner import Runner
from gateway.store import Store
from tests.support.mqtt import Received, TestClient


async def eventually(
    condition: Callable[[], Any], within: float = 10.0, what: str = "condition"
) -> Any:
    """Wait until ``condition()`` is truthy (checked every 20 ms); its value. For state of
    another process or thread (the simulator's registers, the broker's deliveries) that
    offers nothing to await."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def running_gateway(config: GatewayConfig) -> AsyncIterator[Runner]:
    """The gateway service in this event loop, stopped cleanly at the end."""
    sim = config.simulation
    store = Store.open(config.store)
    clock = GatewayClock(sim.clock_speed, sim.clock_start, sim.clock_anchor)
    runner = Runner(config, clock=clock.now)
    task = asyncio.create_task(runner.run(store), name="gateway-under-test")
    try:
        await asyncio.wait_for(runner.started.wait(), 10)
        yield runner
    finally:
        runner.stop.set()
        try:
            await asyncio.wait_for(task, 15)
        finally:
            store.close()


def drain_messages(client: TestClient) -> list[Received]:
    out = []
    while not client.messages.empty():
        out.append(client.messages.get_nowait())
    return out


class MessageLog:
    """Every message a test headend received, parsed, in arrival order."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.items: list[tuple[str, dict[str, Any]]] = []

    def pull(self) -> list[tuple[str, dict[str, Any]]]:
        for msg in drain_messages(self.client):
            try:
                self.items.append((msg.topic, json.loads(msg.payload)))
            except ValueError:
                self.items.append((msg.topic, {"raw": msg.payload.decode(errors="replace")}))
        return self.items

    def events(self, meter: str, name: str | None = None) -> list[dict[str, Any]]:
        return [
            m
            for t, m in self.pull()
            if t.endswith(f"/meters/{meter}/event") and (name is None or m.get("event") == name)
        ]

    def events_all(self) -> list[dict[str, Any]]:
        """Every meter's events, in arrival order."""
        return [m for t, m in self.pull() if t.endswith("/event")]

    def of(self, meter: str, kind: str) -> list[dict[str, Any]]:
        return [m for t, m in self.pull() if t.endswith(f"/meters/{meter}/{kind}")]


def sim_start(speed: float) -> tuple[float, datetime]:
    """A shared start for the simulator's and the gateway's accelerated clocks."""
    now = time.time()
    return now, datetime.fromtimestamp(now, UTC)
