"""The Modbus TCP master session, without sockets: replies are matched by transaction id and unit in any chunking and order, a reply that answers the wrong question fails its request alone, a stream out of step fails everything and asks to be dropped, deadlines fail one request and its late reply is dropped, transaction ids still awaited or given up are never reused, and any bytes end every request in exactly one event."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import IOFailure
from protocol.modbus import (
    Event,
    ExceptionCode,
    ExceptionReplyError,
    MbapReader,
    ReplyReceived,
    Request,
    RequestFailed,
    SessionUsageError,
    StreamOutOfStep,
    TcpMaster,
    exception_pdu,
    mbap_frame,
    read_input,
    write_coil,
)
from protocol.modbus.pdu import WRITES

TIMEOUT = 1.0


def registers(request: Request) -> tuple[int, ...]:
    """What the device on the other end holds: unit and address in every register."""
    return tuple((request.unit * 1000 + request.address + i) & 0xFFFF for i in range(request.count))


def reply_pdu(request: Request) -> bytes:
    if request.function in WRITES:
        return request.pdu()  # a single write's confirmation echoes it
    regs = registers(request)
    return bytes((request.function, 2 * len(regs))) + struct.pack(f">{len(regs)}H", *regs)


class Device:
    """The far end: reads the master's frames and answers each from :func:`registers`."""

    def __init__(self) -> None:
        self.reader = MbapReader()
        self.asked: dict[int, Request] = {}

    def take(self, data: bytes, requests: list[Request]) -> list[tuple[int, int]]:
        """(transaction id, unit) of each frame in ``data``, which carries ``requests``."""
        frames = self.reader.feed(data)
        assert [(unit, pdu) for _, unit, pdu in frames] == [(r.unit, r.pdu()) for r in requests]
        for (tid, _, _), request in zip(frames, requests, strict=True):
            self.asked[tid] = request
        return [(tid, unit) for tid, unit, _ in frames]

    def reply(self, tid: int) -> bytes:
        request = self.asked[tid]
        return mbap_frame(tid, request.unit, reply_pdu(request))


def drain(master: TcpMaster) -> list[Event]:
    events = []
    while (event := master.next_event()) is not None:
        events.append(event)
    return events


def sent(master: TcpMaster, device: Device, requests: list[Request], now: float = 0.0) -> list[int]:
    handles = [master.send_request(r, now) for r in requests]
    tids = device.take(master.data_to_send(), requests)
    assert [tid for tid, _ in tids] == handles  # the handle is the transaction id
    return handles


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(order=st.permutations(range(6)), cuts=st.lists(st.integers(0, 10_000), max_size=12))
def test_pipelined_replies_in_any_order_and_chunking_go_to_their_requests(
    order: list[int], cuts: list[int]
) -> None:
    master, device = TcpMaster(timeout=TIMEOUT), Device()
    requests = [read_input(u, 16 * u, 1 + u) for u in range(1, 7)]
    handles = sent(master, device, requests)
    stream = b"".join(device.reply(handles[i]) for i in order)
    for chunk in chunked(stream, cuts):
        master.receive_data(chunk, 0.1)
    events = drain(master)
    assert sorted(e.handle for e in events if isinstance(e, ReplyReceived)) == sorted(handles)
    for event in events:
        assert isinstance(event, ReplyReceived)
        assert event.values == registers(event.request)
        assert event.request is requests[handles.index(event.handle)]
    assert master.in_flight == 0
    assert master.stray_replies == 0


def test_a_burst_of_requests_goes_out_in_one_write() -> None:
    master = TcpMaster(timeout=TIMEOUT)
    for unit in (1, 2, 3):
        master.send_request(read_input(unit, 0, 2), 0.0)
    data = master.data_to_send()
    assert len(data) == 3 * 12
    assert master.data_to_send() == b""


@pytest.mark.parametrize(
    ("unit", "pdu", "why"),
    [
        (9, None, "reply from unit 9"),  # another unit, the right shape
        (1, bytes((4, 2, 0, 1)), "with 4 bytes"),  # shorter than asked
    ],
)
def test_a_known_transaction_that_answers_another_question_fails_alone(
    unit: int, pdu: bytes | None, why: str
) -> None:
    master, device = TcpMaster(timeout=TIMEOUT), Device()
    first, second = sent(master, device, [read_input(1, 0, 2), read_input(2, 0, 2)])
    wrong = mbap_frame(first, unit, pdu if pdu is not None else reply_pdu(read_input(1, 0, 2)))
    master.receive_data(wrong + device.reply(second), 0.1)
    failed, good = drain(master)
    assert isinstance(failed, RequestFailed)
    assert (failed.handle, failed.failure) == (first, IOFailure.GARBLED)
    assert why in failed.cause
    assert isinstance(good, ReplyReceived)
    assert good.handle == second
    assert master.broken is None  # in step: the stream goes on
    assert master.stray_replies == 1


def test_an_exception_reply_fails_its_request_with_the_code() -> None:
    master, device = TcpMaster(timeout=TIMEOUT), Device()
    (handle,) = sent(master, device, [write_coil(3, 0, True)])
    master.receive_data(mbap_frame(handle, 3, exception_pdu(5, 6)), 0.1)
    (event,) = drain(master)
    assert isinstance(event, RequestFailed)
    assert event.failure is IOFailure.EXCEPTION
    assert "server device busy" in event.cause
    assert isinstance(event.error, ExceptionReplyError)
    assert event.error.code == ExceptionCode.SERVER_DEVICE_BUSY


@pytest.mark.parametrize(
    ("garbage", "why"),
    [
        (struct.pack(">HHHB", 999, 0, 5, 1), "unknown transaction 999"),
        (struct.pack(">HHHB", 1, 7, 5, 1), "protocol id 7"),
        (struct.pack(">HHHB", 1, 0, 300, 1), "length 300"),
    ],
)
def test_a_stream_out_of_step_fails_everything_and_asks_to_be_dropped(
    garbage: bytes, why: str
) -> None:
    master, device = TcpMaster(timeout=TIMEOUT), Device()
    handles = sent(master, device, [read_input(u, 0, 2) for u in (1, 2, 3)])
    # A whole good reply, then garbage, in one chunk: the splice may sit in any reply
    # decoded from this data, so even the good one is not used.
    master.receive_data(device.reply(handles[0]) + garbage, 0.1)
    events = drain(master)
    assert isinstance(events[-1], StreamOutOfStep)
    assert why in events[-1].reason
    failures = {e.handle: e.failure for e in events[:-1] if isinstance(e, RequestFailed)}
    assert failures == {
        handles[0]: IOFailure.GARBLED,
        handles[1]: IOFailure.CONNECTION,
        handles[2]: IOFailure.CONNECTION,
    }
    assert master.broken is not None
    master.receive_data(device.reply(handles[1]), 0.2)  # nothing it says is trusted now
    assert drain(master) == []
    with pytest.raises(SessionUsageError):
        master.send_request(read_input(1, 0, 1), 0.3)


def test_replies_taken_before_the_garbage_chunk_stand() -> None:
    master, device = TcpMaster(timeout=TIMEOUT), Device()
    first, _ = sent(master, device, [read_input(1, 0, 2), read_input(2, 0, 2)])
    master.receive_data(device.reply(first), 0.1)
    master.receive_data(struct.pack(">HHHB", 999, 0, 5, 1), 0.2)
    events = drain(master)
    assert isinstance(events[0], ReplyReceived)
    assert events[0].handle == first
    assert isinstance(events[-1], StreamOutOfStep)


def test_a_deadline_fails_one_request_and_its_late_reply_is_dropped() -> None:
    master, device = TcpMaster(timeout=TIMEOUT), Device()
    (slow,) = sent(master, device, [read_input(1, 0, 2)], now=0.0)
    (fast,) = sent(master, device, [read_input(2, 0, 2)], now=0.5)
    assert master.get_timer() == 1.0  # the first deadline: sent at 0 + timeout
    master.handle_timer(0.999)
    assert drain(master) == []
    master.handle_timer(1.0)
    (timed_out,) = drain(master)
    assert isinstance(timed_out, RequestFailed)
    assert (timed_out.handle, timed_out.failure) == (slow, IOFailure.TIMEOUT)
    assert master.get_timer() == 1.5
    # The late reply comes first, then the other's: only the other's is an event.
    master.receive_data(device.reply(slow) + device.reply(fast), 1.2)
    (answered,) = drain(master)
    assert isinstance(answered, ReplyReceived)
    assert answered.handle == fast
    assert master.stray_replies == 1
    assert master.broken is None
    master.receive_data(device.reply(slow), 1.3)  # twice late: not in flight, not given up
    assert isinstance(drain(master)[-1], StreamOutOfStep)


def test_a_deadline_passing_with_a_reply_half_received_means_out_of_step() -> None:
    master, device = TcpMaster(timeout=TIMEOUT), Device()
    first, second = sent(master, device, [read_input(1, 0, 2), read_input(2, 0, 2)])
    master.receive_data(device.reply(first)[:9], 0.1)
    master.handle_timer(1.0)
    events = drain(master)
    assert [(type(e).__name__, getattr(e, "failure", None)) for e in events] == [
        ("RequestFailed", IOFailure.GARBLED),
        ("RequestFailed", IOFailure.CONNECTION),
        ("StreamOutOfStep", None),
    ]
    assert isinstance(events[0], RequestFailed)
    assert events[0].cause == "reply truncated"
    assert isinstance(events[1], RequestFailed)
    assert events[1].handle == second


def test_an_abandoned_request_ends_in_no_event_and_its_reply_is_dropped() -> None:
    master, device = TcpMaster(timeout=TIMEOUT), Device()
    (handle,) = sent(master, device, [read_input(1, 0, 2)])
    master.abandon(handle)
    master.receive_data(device.reply(handle), 0.1)
    master.handle_timer(10.0)
    assert drain(master) == []
    assert master.stray_replies == 1


def test_a_lost_connection_fails_every_request_in_flight() -> None:
    master, device = TcpMaster(timeout=TIMEOUT), Device()
    handles = sent(master, device, [read_input(u, 0, 1) for u in (1, 2)])
    master.connection_lost("connection reset by peer")
    events = drain(master)
    assert [(e.handle, e.failure, e.cause) for e in events if isinstance(e, RequestFailed)] == [
        (h, IOFailure.CONNECTION, "connection reset by peer") for h in handles
    ]
    assert master.get_timer() is None


def test_a_transaction_id_awaited_or_given_up_is_never_reused() -> None:
    master, device = TcpMaster(timeout=TIMEOUT), Device()
    (given_up,) = sent(master, device, [read_input(1, 0, 1)], now=0.0)
    (awaited,) = sent(master, device, [read_input(2, 0, 1)], now=0.9)
    master.handle_timer(1.0)
    drain(master)
    used = {given_up, awaited}
    # Every other id, answered at once, until the numbering has come round twice.
    for _ in range(2 * 0xFFFF):
        (tid,) = sent(master, device, [read_input(3, 0, 1)], now=0.95)
        assert tid not in used
        assert 1 <= tid <= 0xFFFF
        master.receive_data(device.reply(tid), 0.95)
        assert isinstance(master.next_event(), ReplyReceived)


@given(
    garbage=st.binary(max_size=300),
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
    answered=st.lists(st.booleans(), min_size=3, max_size=3),
)
def test_any_bytes_end_every_request_in_exactly_one_event(
    garbage: bytes, cuts: list[int], answered: list[bool]
) -> None:
    master, device = TcpMaster(timeout=TIMEOUT), Device()
    requests = [read_input(1, 0, 2), read_input(2, 0, 2), write_coil(3, 0, True)]
    handles = sent(master, device, requests)
    replies = b"".join(device.reply(h) for h, a in zip(handles, answered, strict=True) if a)
    for chunk in chunked(replies + garbage, cuts):
        master.receive_data(chunk, 0.1)
    master.handle_timer(TIMEOUT)
    outcomes: dict[int, list[Event]] = {h: [] for h in handles}
    for event in drain(master):
        if isinstance(event, ReplyReceived | RequestFailed):
            outcomes[event.handle].append(event)
    assert all(len(events) == 1 for events in outcomes.values()), outcomes
    # A request whose reply came is answered with it or fails; garbage never answers it
    # (TCP has no CRC: garbage shaped like a reply may answer one still awaited).
    for handle, was_answered in zip(handles, answered, strict=True):
        (event,) = outcomes[handle]
        if was_answered and isinstance(event, ReplyReceived):
            assert event.handle == handle
            assert event.values == (
                () if event.request.function in WRITES else registers(event.request)
            )
    assert master.in_flight == 0
