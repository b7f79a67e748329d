"""Shared pieces of the reliability suite: the gateway as a killable subprocess, online
tokens, headend collection, and the counts that grow behind environment variables."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from examples.headend import Headend
from gateway.store import Store
from tests.support.gateway_env import GatewayWorld, meter_id, online_token
from tests.support.gateway_process import start_gateway
from tests.support.mqtt import TestClient

__all__ = ["start_gateway"]  # the reliability tests import it from here too


def env_count(name: str, ci: int, big: int) -> int:
    """``ci`` in CI; ``big`` when PREPAID_EDGE_SOAK=1; an explicit number in ``name`` wins."""
    raw = os.environ.get(name)
    if raw:
        return int(raw)
    return big if os.environ.get("PREPAID_EDGE_SOAK") == "1" else ci


def kill9(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def outbox_depth(store_path: Path) -> int:
    with Store.open(store_path) as store:
        return store.outbox_depth()


@dataclass
class Purchases:
    """Every purchase made for every meter, by channel, sharing one counter per meter."""

    world: GatewayWorld
    made: dict[str, list[tuple[int, int, str]]] = field(default_factory=dict)

    def next_counter(self, unit: int) -> int:
        mid = meter_id(unit)
        counter = self.world.counters.get(mid, 0) + 1
        self.world.counters[mid] = counter
        return counter

    def keypad(self, unit: int, amount: int) -> str:
        counter = self.next_counter(unit)
        self.made.setdefault(meter_id(unit), []).append((counter, amount, "keypad"))
        return self.world.keypad_token(unit, amount, counter)

    def online(self, unit: int, amount: int) -> tuple[str, dict[str, Any]]:
        counter = self.next_counter(unit)
        mid = meter_id(unit)
        self.made.setdefault(mid, []).append((counter, amount, "online"))
        token = online_token(unit, counter, amount)
        request = f"topup-{mid}-{counter}"
        return request, {
            "v": 1,
            "id": request,
            "cmd": "topup",
            "token": token,
            "correlation": request,
        }


def feed(client: TestClient, headend: Headend, results: dict[str, dict[str, Any]]) -> int:
    """Hand everything the client received to the headend; command results by request id."""
    count = 0
    while True:
        try:
            msg = client.messages.get_nowait()
        except queue.Empty:
            return count
        count += 1
        if msg.topic.endswith("/cmd/result"):
            body = json.loads(msg.payload)
            if isinstance(body.get("correlation"), str):
                results[body["correlation"]] = body
            continue
        if msg.topic.endswith("/cmd"):
            continue
        headend.handle(msg.topic, msg.payload)


def detail(event: Mapping[str, object], key: str) -> int:
    """An integer field of a stored event's ``details``."""
    details = event.get("details")
    assert isinstance(details, dict), event
    value = details.get(key)
    assert isinstance(value, int), event
    return value
