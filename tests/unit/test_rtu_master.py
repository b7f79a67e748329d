"""The Modbus RTU master session, without a serial line: one request at a time, each after the 3.5-character silence; a reply is taken only whole, from the unit asked, with the right length and CRC; deadlines count the wire time; after a failure the line keeps a guard time and a late reply is never taken for the next request; any bytes end every request in exactly one event."""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import IOFailure
from protocol.modbus import (
    Event,
    ReplyReceived,
    Request,
    RequestFailed,
    RtuMaster,
    SessionUsageError,
    exception_pdu,
    read_input,
    rtu_char_time,
    rtu_frame,
    rtu_silence,
)

BAUD = 9600
CHAR = rtu_char_time(BAUD)
SILENCE = rtu_silence(BAUD)
TIMEOUT = 0.5
GUARD = 0.2


def reply(request: Request, unit: int | None = None) -> bytes:
    """The device's whole reply frame: unit and address in every register."""
    regs = [request.unit * 1000 + request.address + i for i in range(request.count)]
    pdu = bytes((request.function, 2 * request.count)) + struct.pack(f">{request.count}H", *regs)
    return rtu_frame(request.unit if unit is None else unit, pdu)


def values(request: Request) -> tuple[int, ...]:
    return tuple(request.unit * 1000 + request.address + i for i in range(request.count))


def drain(master: RtuMaster) -> list[Event]:
    events = []
    while (event := master.next_event()) is not None:
        events.append(event)
    return events


def exchange_deadline(request: Request, sent_at: float) -> float:
    """When a request sent at ``sent_at`` times out: its wire time, the reply's, the timeout."""
    return sent_at + (8 + 1 + request.reply_pdu_length() + 2) * CHAR + TIMEOUT


def test_a_request_on_a_silent_line_goes_out_at_once_and_its_reply_is_taken() -> None:
    master = RtuMaster(baud=BAUD, timeout=TIMEOUT, guard=GUARD)
    request = read_input(7, 1, 22)
    handle = master.send_request(request, 10.0)
    assert master.data_to_send() == rtu_frame(7, request.pdu())
    assert master.get_timer() == pytest.approx(exchange_deadline(request, 10.0))
    frame = reply(request)
    for i, byte in enumerate(frame):  # byte by byte, as a slow line delivers it
        assert drain(master) == []
        master.receive_data(bytes((byte,)), 10.01 + i * CHAR)
    (event,) = drain(master)
    assert event == ReplyReceived(handle, request, values(request))
    assert not master.busy
    assert master.get_timer() is None


def test_the_next_request_waits_for_the_silence_after_the_line_last_spoke() -> None:
    master = RtuMaster(baud=BAUD, timeout=TIMEOUT, guard=GUARD)
    first, second = read_input(1, 0, 2), read_input(2, 0, 2)
    master.send_request(first, 0.0)
    master.data_to_send()
    master.receive_data(reply(first), 0.05)
    drain(master)
    master.send_request(second, 0.051)
    assert master.data_to_send() == b""  # too soon
    assert master.get_timer() == pytest.approx(0.05 + SILENCE)
    master.handle_timer(0.05 + SILENCE - 1e-6)
    assert master.data_to_send() == b""
    master.handle_timer(0.05 + SILENCE)
    assert master.data_to_send() == rtu_frame(2, second.pdu())


def test_only_one_request_at_a_time() -> None:
    master = RtuMaster(baud=BAUD, timeout=TIMEOUT, guard=GUARD)
    master.send_request(read_input(1, 0, 1), 0.0)
    with pytest.raises(SessionUsageError):
        master.send_request(read_input(2, 0, 1), 0.0)


@pytest.mark.parametrize(
    ("frame", "failure", "why"),
    [
        (lambda r: reply(r)[:-1] + bytes((reply(r)[-1] ^ 1,)), IOFailure.GARBLED, "CRC"),
        (lambda r: reply(r, unit=9), IOFailure.GARBLED, "from unit 9"),
        (lambda r: rtu_frame(r.unit, exception_pdu(4, 2)), IOFailure.EXCEPTION, "address"),
    ],
    ids=["bad CRC", "another unit", "exception"],
)
def test_a_wrong_reply_fails_and_the_line_keeps_its_guard_time(
    frame: Callable[[Request], bytes], failure: IOFailure, why: str
) -> None:
    master = RtuMaster(baud=BAUD, timeout=TIMEOUT, guard=GUARD)
    request = read_input(3, 0, 2)
    handle = master.send_request(request, 0.0)
    master.data_to_send()
    master.receive_data(frame(request), 0.05)
    (event,) = drain(master)
    assert isinstance(event, RequestFailed)
    assert (event.handle, event.failure) == (handle, failure)
    assert why in event.cause
    master.send_request(read_input(4, 0, 2), 0.06)
    assert master.get_timer() == pytest.approx(0.05 + GUARD)  # silent until the guard ends
    master.handle_timer(0.05 + GUARD)
    assert master.data_to_send()


def test_no_reply_fails_at_the_deadline_counted_with_the_wire_time() -> None:
    master = RtuMaster(baud=BAUD, timeout=TIMEOUT, guard=GUARD)
    request = read_input(5, 0, 22)
    master.send_request(request, 0.0)
    master.data_to_send()
    deadline = exchange_deadline(request, 0.0)
    master.handle_timer(deadline - 1e-6)
    assert drain(master) == []
    master.handle_timer(deadline)
    (event,) = drain(master)
    assert isinstance(event, RequestFailed)
    assert event.failure is IOFailure.TIMEOUT


def test_a_reply_that_stops_halfway_fails_as_truncated_after_its_own_wire_time() -> None:
    master = RtuMaster(baud=BAUD, timeout=TIMEOUT, guard=GUARD)
    request = read_input(5, 0, 22)
    master.send_request(request, 0.0)
    master.data_to_send()
    frame = reply(request)
    master.receive_data(frame[:10], 0.05)
    deadline = exchange_deadline(request, 0.0) + len(frame) * CHAR
    assert master.get_timer() == pytest.approx(deadline)
    master.handle_timer(deadline)
    (event,) = drain(master)
    assert isinstance(event, RequestFailed)
    assert (event.failure, event.cause) == (IOFailure.GARBLED, "reply truncated")
    assert master.discarded_bytes == 10


def test_a_late_reply_is_never_taken_for_the_next_request() -> None:
    master = RtuMaster(baud=BAUD, timeout=TIMEOUT, guard=GUARD)
    slow, next_one = read_input(1, 0, 2), read_input(1, 0, 2)  # the same question twice
    master.send_request(slow, 0.0)
    master.data_to_send()
    deadline = exchange_deadline(slow, 0.0)
    master.handle_timer(deadline)
    drain(master)
    handle = master.send_request(next_one, deadline + 0.01)
    master.receive_data(reply(slow), deadline + 0.02)  # the slow meter answers at last
    assert master.data_to_send() == b""  # still silent: the guard, then the silence
    assert master.get_timer() == pytest.approx(deadline + GUARD)
    master.handle_timer(deadline + GUARD)
    assert master.data_to_send()
    assert master.discarded_bytes == len(reply(slow))  # dropped before our request went out
    assert drain(master) == []
    master.receive_data(reply(next_one), deadline + GUARD + 0.05)
    (event,) = drain(master)
    assert isinstance(event, ReplyReceived)
    assert event.handle == handle


def test_bytes_after_a_whole_reply_are_discarded() -> None:
    master = RtuMaster(baud=BAUD, timeout=TIMEOUT, guard=GUARD)
    request = read_input(2, 0, 1)
    master.send_request(request, 0.0)
    master.data_to_send()
    master.receive_data(reply(request) + b"\x00\xff", 0.05)
    master.receive_data(b"\x01", 0.06)
    (event,) = drain(master)
    assert isinstance(event, ReplyReceived)
    assert master.discarded_bytes == 3


def test_an_abandoned_request_ends_in_no_event_and_keeps_the_guard() -> None:
    master = RtuMaster(baud=BAUD, timeout=TIMEOUT, guard=GUARD)
    handle = master.send_request(read_input(2, 0, 1), 0.0)
    master.data_to_send()
    master.abandon(handle, 0.1)
    master.handle_timer(10.0)
    assert drain(master) == []
    master.send_request(read_input(3, 0, 1), 0.11)
    assert master.get_timer() == pytest.approx(0.1 + GUARD)


def test_a_lost_line_fails_the_request_on_it() -> None:
    master = RtuMaster(baud=BAUD, timeout=TIMEOUT, guard=GUARD)
    handle = master.send_request(read_input(2, 0, 1), 0.0)
    master.connection_lost("device disconnected")
    (event,) = drain(master)
    assert isinstance(event, RequestFailed)
    assert (event.handle, event.failure, event.cause) == (
        handle,
        IOFailure.CONNECTION,
        "device disconnected",
    )
    assert not master.busy


def test_the_guard_time_covers_the_longest_frame_at_slow_rates() -> None:
    assert RtuMaster(baud=9600, timeout=TIMEOUT).guard == pytest.approx(260 * 11 / 9600)
    assert RtuMaster(baud=115200, timeout=TIMEOUT).guard == 0.05


@given(
    data=st.binary(max_size=80),
    cuts=st.lists(st.integers(0, 1000), max_size=6),
    good_first=st.booleans(),
)
def test_any_bytes_end_the_request_in_exactly_one_event(
    data: bytes, cuts: list[int], good_first: bool
) -> None:
    master = RtuMaster(baud=BAUD, timeout=TIMEOUT, guard=GUARD)
    request = read_input(6, 0, 2)
    handle = master.send_request(request, 0.0)
    master.data_to_send()
    stream = (reply(request) if good_first else b"") + data
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    for a, b in itertools.pairwise(points):
        master.receive_data(stream[a:b], 0.01)
    master.handle_timer(1e9)
    events = drain(master)
    assert len(events) == 1
    (event,) = events
    assert isinstance(event, ReplyReceived | RequestFailed)
    assert event.handle == handle
    if isinstance(event, ReplyReceived):  # only a whole frame from unit 6 with a good CRC
        assert stream[0] == 6
        if good_first:
            assert event.values == values(request)
