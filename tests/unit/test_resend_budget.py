"""One requester's resends are paid from its own budget of rows (refused rate_limited past it, nothing queued, refilled with time) while other requesters' are not touched, and docs/mqtt.md states the figures the code holds."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.core.commands import Publish
from gateway.resend import (
    MAX_ROWS,
    RATE,
    REQUESTER_BURST,
    REQUESTER_RATE,
    ResendQueue,
    ResendRateLimitedError,
)
from gateway.store import MeterUpdate, Store
from protocol.mqtt import Topics
from tests.support.gateway_env import GatewayWorld, meter_id

MQTT_DOC = Path(__file__).resolve().parents[2] / "docs" / "mqtt.md"
M1, M2 = meter_id(1), meter_id(2)
HISTORY = 3 * MAX_ROWS


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """Two meters, each with HISTORY stored messages."""
    world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
    world.enrol([1, 2])
    with Store.open(world.store_path) as store:
        now = datetime.now(UTC)
        for meter in store.load_meters():
            body: dict[str, Any] = {
                "kind": "event",
                "event": "tariff_scheduled",
                "reason": "x",
                "details": {},
            }
            commands = [Publish(meter.record.meter_id, "event", body)] * HISTORY
            store.commit_cycle([MeterUpdate(meter.state, commands, now)])
        yield store


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _queue(store: Store, clock: Clock) -> ResendQueue:
    return ResendQueue(
        store.outbox_since_raw, store.outbox_seqs_since, Topics("gw-test"), monotonic=clock
    )


def test_a_requester_past_its_budget_is_refused_and_others_are_not(store: Store) -> None:
    clock = Clock()
    queue = _queue(store, clock)
    full_requests = REQUESTER_BURST // MAX_ROWS
    for _ in range(full_requests):
        assert queue.plan(M1, 1, "headend/flood/replies").count == MAX_ROWS
    with pytest.raises(ResendRateLimitedError) as refused:
        queue.plan(M2, 1, "headend/flood/replies")
    assert refused.value.retry_after_s == pytest.approx(MAX_ROWS / REQUESTER_RATE)
    assert list(queue._queue) == [M1]  # the refused request queued nothing
    # Another requester, and the 3.1.1 clients' shared topic, have budgets of their own.
    assert queue.plan(M2, 1, "headend/hq/replies").count == MAX_ROWS
    assert queue.plan(M2, 1, "prepaid/v1/gw-test/cmd/result").count == MAX_ROWS
    # Time refills the flooder's budget at REQUESTER_RATE.
    clock.t += MAX_ROWS / REQUESTER_RATE - 1
    with pytest.raises(ResendRateLimitedError):
        queue.plan(M2, 1, "headend/flood/replies")
    clock.t += 1
    assert queue.plan(M2, 1, "headend/flood/replies").count == MAX_ROWS


def test_an_empty_request_still_costs_one_row(store: Store) -> None:
    queue = _queue(store, Clock())
    for _ in range(REQUESTER_BURST):
        assert queue.plan(M1, HISTORY + 10, "headend/x/replies").count == 0
    with pytest.raises(ResendRateLimitedError):
        queue.plan(M1, HISTORY + 10, "headend/x/replies")


def test_requesters_budgets_held_are_bounded(store: Store) -> None:
    clock = Clock()
    queue = _queue(store, clock)
    for n in range(5000):
        queue.plan(M1, HISTORY + 10, f"headend/r{n}/replies")
        clock.t += 1.0  # each budget is full again a second after its one-row request
    assert len(queue._budgets) <= 1024


def test_docs_state_the_figures_the_code_holds() -> None:
    text = " ".join(MQTT_DOC.read_text(encoding="utf-8").split())
    paragraph = text[text.index("**Resends**") :][:1500]

    def figure(pattern: str) -> int:
        found = re.search(pattern, paragraph)
        assert found, pattern
        return int(found.group(1).replace(",", ""))

    assert figure(r"up to ([\d,]+) a second in all") == RATE
    assert figure(r"One request resends at most ([\d,]+) messages") == MAX_ROWS
    assert figure(r"may ask for ([\d,]+) at once") == REQUESTER_BURST
    assert figure(r"refilled at ([\d,]+) a minute") == REQUESTER_RATE * 60
