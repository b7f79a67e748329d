"""The Modbus TCP master as a pure session on one connection: requests in, bytes out,
bytes and the time in, one event per request out. No socket, no clock, no asyncio.

Requests are pipelined; each reply is matched to its request by transaction id, and is
taken only whole and in step:

- its header names a transaction in flight, the unit asked, and exactly the length a
  reply to that request has (or an exception reply's); a known transaction with another
  unit or length fails that request alone, and the stream goes on;
- a header naming no transaction in flight (or a broken header) means the stream is out
  of step (a truncated reply spliced with the next one, garbage): every request decoded
  from that data fails, since the splice may sit in any of them, every other request in
  flight fails, and :class:`~protocol.modbus.events.StreamOutOfStep` tells the shell to
  drop the connection;
- each request has its own deadline (the session's timeout after it was sent): past it,
  the request fails alone and its late reply, should it come, is recognised and dropped
  (a slow unit behind a serial device server never closes the connection the healthy
  ones use); a deadline that passes while a reply is half received means the stream is
  stuck: out of step;
- a transaction id still awaited or given up is never reused.
"""

from __future__ import annotations

from collections import deque

from protocol.errors import DecodeError, IOFailure
from protocol.modbus.events import (
    Event,
    RequestFailed,
    SessionUsageError,
    StreamOutOfStep,
    outcome,
)
from protocol.modbus.mbap import mbap_frame, parse_mbap_header
from protocol.modbus.pdu import Request, parse_reply_pdu

#: Requests given up (timed out) whose late replies are recognised and dropped.
LATE_REPLIES_KEPT = 256
#: Transaction ids 1..65535 (0 is left alone: some servers treat it specially).
_TIDS = 0xFFFF

#: One request in flight: (transaction id, request, deadline).
_InFlight = tuple[int, Request, float]
#: A reply matched in a chunk of data, used only when the whole chunk is in step.
_Taken = tuple[int, Request, bytes]


class TcpMaster:
    """A Modbus TCP master's side of one connection (h11 / aioquic style)."""

    def __init__(self, *, timeout: float) -> None:
        self.timeout = timeout
        self._pending: dict[int, _InFlight] = {}
        #: every deadline is sent + timeout, so they expire in the order sent: a FIFO
        self._deadlines: deque[_InFlight] = deque()
        #: transaction id -> request, of requests given up while their reply may come
        self._late: dict[int, Request] = {}
        self._next_tid = 1
        self._buffer = b""
        self._outgoing: list[bytes] = []
        self._events: deque[Event] = deque()
        self._broken: str | None = None
        #: late replies to given-up requests and replies that answered the wrong question
        self.stray_replies = 0

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    @property
    def broken(self) -> str | None:
        """Why this stream is finished (out of step, lost), or None while it is usable."""
        return self._broken

    # ------------------------------------------------------------------ inputs

    def send_request(self, request: Request, now: float) -> int:
        """Queue ``request`` (see :meth:`data_to_send`); returns its transaction id, which
        names it in the event that ends it."""
        if self._broken is not None:
            raise SessionUsageError(f"send on a finished stream ({self._broken})")
        pending, late = self._pending, self._late
        if len(pending) + len(late) >= _TIDS:
            raise SessionUsageError("every transaction id is in use")
        tid = self._next_tid
        while tid in pending or tid in late:  # never reuse one still awaited or given up
            tid = tid % _TIDS + 1
        self._next_tid = tid % _TIDS + 1
        entry = (tid, request, now + self.timeout)
        pending[tid] = entry
        self._outgoing.append(mbap_frame(tid, request.unit, request.pdu()))
        deadlines = self._deadlines
        while deadlines and pending.get(deadlines[0][0]) is not deadlines[0]:
            deadlines.popleft()  # answered already (most are): keep the queue short
        deadlines.append(entry)
        return tid

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the connection, in whatever pieces they came."""
        if self._broken is not None:
            return  # nothing a finished stream says is trusted
        buf = self._buffer + data if self._buffer else data
        pending, late, events = self._pending, self._late, self._events
        pos, size = 0, len(buf)
        taken: list[_Taken] = []
        while size - pos >= 7:
            try:
                tid, length, unit = parse_mbap_header(buf[pos : pos + 7])
            except DecodeError as exc:
                self._out_of_step(taken, str(exc))
                return
            entry = pending.get(tid)
            if entry is None and tid not in late:
                self._out_of_step(taken, f"reply with unknown transaction {tid}")
                return
            end = pos + 7 + length
            if end > size:
                break
            pdu = buf[pos + 7 : end]
            pos = end
            if entry is None:
                self.stray_replies += 1  # a late reply to a request already failed
                del late[tid]
                continue
            del pending[tid]
            request = entry[1]
            if request.unit != unit or length not in (request.reply_pdu_length(), 2):
                # In step (a known transaction) but not an answer to what was asked: that
                # request fails, never misattributed; the stream goes on.
                self.stray_replies += 1
                cause = f"reply from unit {unit} with {length} bytes"
                events.append(RequestFailed(tid, request, IOFailure.GARBLED, cause))
                continue
            taken.append((tid, request, pdu))
        self._buffer = buf[pos:] if pos < size else b""
        for tid, request, pdu in taken:
            events.append(outcome(tid, request, pdu, parse_reply_pdu))

    def handle_timer(self, now: float) -> None:
        """Fail the requests whose deadline has passed (see :meth:`get_timer`)."""
        deadlines, pending = self._deadlines, self._pending
        while deadlines:
            entry = deadlines[0]
            tid, request, deadline = entry
            if pending.get(tid) is not entry:
                deadlines.popleft()
                continue
            if deadline > now:
                break
            deadlines.popleft()
            del pending[tid]
            if self._buffer:
                # A reply started and never finished: the stream cannot be trusted to be
                # in step any more.
                self._events.append(
                    RequestFailed(tid, request, IOFailure.GARBLED, "reply truncated")
                )
                self._out_of_step([], "reply truncated")
                return
            self._given_up(tid, request)
            cause = f"no reply within {self.timeout}s"
            self._events.append(RequestFailed(tid, request, IOFailure.TIMEOUT, cause))

    def abandon(self, handle: int) -> None:
        """The shell no longer waits for request ``handle``: no event will name it, and
        its reply, should it come, is dropped."""
        entry = self._pending.pop(handle, None)
        if entry is not None:
            self._given_up(handle, entry[1])

    def connection_lost(self, reason: str) -> None:
        """The connection is gone: every request in flight fails with ``reason``."""
        if self._broken is None:
            self._finish(IOFailure.CONNECTION, reason)

    # ------------------------------------------------------------------ outputs

    def data_to_send(self) -> bytes:
        """The frames queued since the last call, joined: one write for a burst."""
        out = self._outgoing
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should next run (None: nothing to wait for). It may
        name a request answered since; the call then does nothing."""
        return self._deadlines[0][2] if self._deadlines else None

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    # ------------------------------------------------------------------ inside

    def _given_up(self, tid: int, request: Request) -> None:
        """Remember a request that failed while its reply may still come (bounded)."""
        late = self._late
        late[tid] = request
        if len(late) > LATE_REPLIES_KEPT:
            del late[next(iter(late))]

    def _out_of_step(self, taken: list[_Taken], why: str) -> None:
        reason = f"stream out of step: {why}"
        for tid, request, _pdu in taken:
            self._events.append(RequestFailed(tid, request, IOFailure.GARBLED, reason))
        self._finish(IOFailure.CONNECTION, reason)
        self._events.append(StreamOutOfStep(reason))

    def _finish(self, failure: IOFailure, reason: str) -> None:
        """This stream is over: every request in flight fails, nothing more is taken."""
        self._broken = reason
        for tid, request, _deadline in self._pending.values():
            self._events.append(RequestFailed(tid, request, failure, reason))
        self._pending.clear()
        self._deadlines.clear()
        self._late.clear()
        self._outgoing.clear()
        self._buffer = b""
