"""Shared fixtures: real Mosquitto brokers (plain and mutual TLS) on free loopback ports."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.support.mosquitto import Mosquitto, tls_broker


def _run(broker: Mosquitto, request: pytest.FixtureRequest) -> Iterator[Mosquitto]:
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(f"\n--- mosquitto log ({broker.log_path}) ---\n{broker.log()}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the item so fixtures can show the broker log on failure."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def mosquitto(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Mosquitto]:
    """A plain broker, anonymous clients allowed."""
    yield from _run(Mosquitto(tmp_path), request)


@pytest.fixture
def mosquitto_tls(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Mosquitto]:
    """A broker requiring client certificates, with the test ACL."""
    yield from _run(tls_broker(tmp_path), request)
