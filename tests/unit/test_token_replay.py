"""The replay window accepts each counter at most once, any order inside 64 below the highest, refuses older ones as TOO_OLD, and validates its stored ints."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.tokens import RejectReason, ReplayWindow, TokenRejected
from protocol.tokens.replay import WINDOW_BITS


def test_fresh_window_accepts_anything_in_range() -> None:
    window = ReplayWindow.fresh(3)
    assert (window.epoch, window.highest, window.bitmap) == (3, -1, 0)
    assert window.check(0) is None
    assert window.check(65535) is None
    assert window.check(65536) is RejectReason.MALFORMED
    assert window.check(-1) is RejectReason.MALFORMED


def test_bitmap_convention() -> None:
    window = ReplayWindow.fresh(0).record(10).record(8).record(9)
    assert window.highest == 10
    assert window.bitmap == 0b11  # bit 0: counter 9, bit 1: counter 8
    window = window.record(12)
    assert window.bitmap == 0b1110  # 11 free, 10, 9, 8 used


def test_edges_of_the_window() -> None:
    window = ReplayWindow.fresh(0).record(100)
    assert window.check(100 - WINDOW_BITS) is None
    assert window.check(100 - WINDOW_BITS - 1) is RejectReason.TOO_OLD
    window = window.record(100 - WINDOW_BITS)
    assert window.check(100 - WINDOW_BITS) is RejectReason.REPLAYED
    jumped = window.record(100 + WINDOW_BITS)
    assert jumped.check(100) is RejectReason.REPLAYED
    assert jumped.check(99) is RejectReason.TOO_OLD
    far = window.record(100 + WINDOW_BITS + 1)
    assert far.bitmap == 0
    assert far.check(100) is RejectReason.TOO_OLD


def test_record_refuses_what_check_refuses() -> None:
    window = ReplayWindow.fresh(0).record(5)
    with pytest.raises(TokenRejected) as caught:
        window.record(5)
    assert caught.value.reason is RejectReason.REPLAYED


@pytest.mark.parametrize(
    ("epoch", "highest", "bitmap"),
    [
        (0, -2, 0),
        (0, 65536, 0),
        (0, 5, -1),
        (0, 100, 1 << 64),
        (0, -1, 1),
        (0, 3, 0b1000),
        (8192, 0, 0),
    ],
)
def test_impossible_stored_windows_are_refused(epoch: int, highest: int, bitmap: int) -> None:
    with pytest.raises(ValueError, match=r"counter|bitmap|epoch"):
        ReplayWindow(epoch, highest, bitmap)


@given(st.lists(st.integers(0, 300), max_size=200))
def test_window_matches_a_model_of_used_counters(counters: list[int]) -> None:
    """Model: a set of used counters and the highest; the window must agree exactly."""
    window = ReplayWindow.fresh(0)
    used: set[int] = set()
    for counter in counters:
        highest = max(used, default=-1)
        if counter in used:
            expected: RejectReason | None = RejectReason.REPLAYED
            if highest - counter > WINDOW_BITS:
                expected = RejectReason.TOO_OLD
        elif highest - counter > WINDOW_BITS:
            expected = RejectReason.TOO_OLD
        else:
            expected = None
        assert window.check(counter) is expected
        if expected is None:
            window = window.record(counter)
            used.add(counter)
        assert ReplayWindow(window.epoch, window.highest, window.bitmap) == window


def test_key_change_resets_only_that_meters_window() -> None:
    meter_a = ReplayWindow.fresh(0).record(40)
    meter_b = ReplayWindow.fresh(0).record(40)
    meter_a = ReplayWindow.fresh(1)
    assert meter_a.check(0) is None
    assert meter_b.check(40) is RejectReason.REPLAYED
