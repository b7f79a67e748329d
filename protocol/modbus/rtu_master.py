"""The Modbus RTU master as a pure session on one serial line: requests in, bytes out,
bytes and the time in, one event per request out. No serial port, no clock, no asyncio.

RTU has no transaction id, so a reply is known only by coming next, whole:

- one request on the wire at a time, each after the 3.5-character silence since the
  line last spoke (the shell is told when by :meth:`RtuMaster.get_timer`);
- a reply is taken only from the unit asked, with exactly the length the request's
  answer has (or an exception reply's) and a good CRC; anything else fails the request;
- a request's deadline is its own wire time plus the reply's plus the timeout; a reply
  still arriving then (its first bytes in) has its own wire time more, then it fails as
  truncated;
- after any failure the line stays silent for a guard time (the longest reply a slow
  meter could still be sending), and whatever arrived before a request goes out is
  discarded, so a late reply is never taken as the answer to the next request. Bytes
  after a whole reply are discarded too: not ours to trust.
"""

from __future__ import annotations

from collections import deque

from protocol.errors import IOFailure
from protocol.modbus.events import (
    Event,
    ReplyReceived,
    RequestFailed,
    SessionUsageError,
    outcome,
)
from protocol.modbus.pdu import Request
from protocol.modbus.rtu import (
    parse_rtu_reply,
    rtu_char_time,
    rtu_frame,
    rtu_reply_length,
    rtu_silence,
)

#: Characters of the longest frame a slow meter could still be sending after a failure.
GUARD_CHARS = 260
#: The shortest guard time, however fast the line.
MIN_GUARD = 0.05
_NEVER = float("-inf")


class RtuMaster:
    """A Modbus RTU master's side of one line (h11 / aioquic style)."""

    def __init__(self, *, baud: int, timeout: float, guard: float | None = None) -> None:
        self.char_time = rtu_char_time(baud)
        self.silence = rtu_silence(baud)
        self.timeout = timeout
        self.guard = guard if guard is not None else max(MIN_GUARD, GUARD_CHARS * self.char_time)
        self._request: Request | None = None
        self._handle = 0
        self._frame = b""
        self._sent = False
        self._send_at = 0.0
        self._deadline = 0.0
        self._total = 0  # the reply's length, once its first two bytes are in
        self._buffer = b""
        self._last_activity = _NEVER  # when the line last spoke (either side)
        self._quiet_until = _NEVER  # the end of the guard time after a failure
        self._outgoing = b""
        self._events: deque[Event] = deque()
        #: bytes thrown away: late replies, noise, anything after a whole reply
        self.discarded_bytes = 0

    @property
    def busy(self) -> bool:
        """Whether a request is waiting for the silence or for its reply."""
        return self._request is not None

    # ------------------------------------------------------------------ inputs

    def send_request(self, request: Request, now: float) -> int:
        """Queue ``request``: it goes out (see :meth:`data_to_send`) now or once the line
        has been silent long enough. Returns the handle that names it in its event."""
        if self._request is not None:
            raise SessionUsageError("one request at a time on an RTU line")
        self._handle += 1
        self._request = request
        self._frame = rtu_frame(request.unit, request.pdu())
        self._sent = False
        self._send_at = max(self._last_activity + self.silence, self._quiet_until)
        if now >= self._send_at:
            self._transmit(now)
        return self._handle

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the line, in whatever pieces they came."""
        self._last_activity = now
        request = self._request
        if request is None or not self._sent:
            self.discarded_bytes += len(data)  # nobody asked: not an answer to anything
            return
        buf = self._buffer + data if self._buffer else data
        total = self._total
        if not total:
            if len(buf) < 2:
                self._buffer = buf
                return
            total = self._total = rtu_reply_length(request, buf[:2])
            self._deadline += total * self.char_time  # the rest may take its wire time
        if len(buf) < total:
            self._buffer = buf
            return
        self.discarded_bytes += len(buf) - total
        self._buffer = b""
        self._finish(outcome(self._handle, request, buf[:total], parse_rtu_reply), now)

    def handle_timer(self, now: float) -> None:
        """Send the request waiting for the silence, or fail the one past its deadline."""
        request = self._request
        if request is None:
            return
        if not self._sent:
            if now >= self._send_at:
                self._transmit(now)
            return
        if now < self._deadline:
            return
        self.discarded_bytes += len(self._buffer)
        if self._total:
            failed = RequestFailed(self._handle, request, IOFailure.GARBLED, "reply truncated")
        else:
            cause = f"no reply within {self.timeout}s"
            failed = RequestFailed(self._handle, request, IOFailure.TIMEOUT, cause)
        self._finish(failed, now)

    def abandon(self, handle: int, now: float) -> None:
        """The shell no longer waits for request ``handle``: no event will name it; if it
        went out, the line keeps the guard time (its reply may still come)."""
        if self._request is None or handle != self._handle:
            return
        if self._sent:
            self._quiet_until = now + self.guard
        self._clear()

    def connection_lost(self, reason: str) -> None:
        """The line is gone: the request on it, if any, fails with ``reason``."""
        request = self._request
        self._outgoing = b""
        if request is not None:
            self._events.append(RequestFailed(self._handle, request, IOFailure.CONNECTION, reason))
            self._clear()

    # ------------------------------------------------------------------ outputs

    def data_to_send(self) -> bytes:
        data, self._outgoing = self._outgoing, b""
        return data

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should next run (None: nothing to wait for)."""
        if self._request is None:
            return None
        return self._deadline if self._sent else self._send_at

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    # ------------------------------------------------------------------ inside

    def _transmit(self, now: float) -> None:
        request = self._request
        assert request is not None
        frame = self._frame
        self._outgoing += frame
        self._sent = True
        self._total = 0
        self._last_activity = now
        # Time for our request and the longest normal reply on the wire, plus the timeout.
        wire = (len(frame) + 1 + request.reply_pdu_length() + 2) * self.char_time
        self._deadline = now + wire + self.timeout

    def _finish(self, event: ReplyReceived | RequestFailed, now: float) -> None:
        if isinstance(event, RequestFailed):
            self._quiet_until = now + self.guard
        self._events.append(event)
        self._clear()

    def _clear(self) -> None:
        self._request = None
        self._sent = False
        self._buffer = b""
        self._total = 0
