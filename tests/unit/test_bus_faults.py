"""What the gateway says about a bus it cannot open or connect: one WARNING with the reason at once, the next ones at a doubling interval from 60 s up to an hour (whatever the number of failed polls), one INFO when it answers again, and a new outage is told at once."""

from __future__ import annotations

import itertools
import logging

import pytest

from gateway.bus_faults import REPEAT_FIRST_S, REPEAT_MAX_S, BusFaults

REASON = "cannot open /dev/ttyUSB0: No such file or directory"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def said(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    out = [(r.levelno, r.getMessage()) for r in caplog.records]
    caplog.clear()
    return out


def test_a_dead_bus_is_told_once_then_at_a_doubling_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.bus_faults")
    clock = Clock()
    faults = BusFaults("rs485-1", clock)
    warned_at = []
    for _ in range(40_000):  # a failed poll every 0.5 s for 5.5 hours
        faults.unreachable(REASON)
        for level, message in said(caplog):
            assert level == logging.WARNING
            assert message.startswith(f"bus rs485-1: {REASON}")
            warned_at.append(clock.now - 1000.0)
        clock.now += 0.5
    gaps = [b - a for a, b in itertools.pairwise(warned_at)]
    assert warned_at[0] == 0.0
    assert gaps[:6] == [REPEAT_FIRST_S * 2**i for i in range(6)]
    assert max(gaps) == REPEAT_MAX_S
    assert len(warned_at) == 11  # not 40,000
    assert faults.reason == REASON


def test_it_says_when_the_bus_answers_again(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.bus_faults")
    clock = Clock()
    faults = BusFaults("tcp-1", clock)
    faults.reachable()
    assert said(caplog) == []  # nothing to say about a bus that never failed
    faults.unreachable("cannot connect to 192.0.2.1:502: Connection refused")
    clock.now += 42
    faults.unreachable("cannot connect to 192.0.2.1:502: No route to host")
    assert faults.reason == "cannot connect to 192.0.2.1:502: No route to host"
    faults.reachable()
    faults.reachable()
    assert said(caplog) == [
        (logging.WARNING, "bus tcp-1: cannot connect to 192.0.2.1:502: Connection refused"),
        (
            logging.INFO,
            "bus tcp-1: reachable again after 42 s "
            "(was: cannot connect to 192.0.2.1:502: No route to host)",
        ),
    ]
    assert faults.reason is None
    faults.unreachable("cannot connect to 192.0.2.1:502: Connection refused")
    assert said(caplog) == [
        (logging.WARNING, "bus tcp-1: cannot connect to 192.0.2.1:502: Connection refused")
    ]
