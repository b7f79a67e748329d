"""The gateway's Modbus ports: Modbus TCP and Modbus RTU (serial device or ``socket://``).

We drive the wire ourselves, with the pure frame codec of :mod:`protocol.modbus`,
because the gateway must never attribute a value to the wrong meter:

- TCP: requests are pipelined on one connection up to a bound, matched to replies by
  transaction id and unit id; a timeout fails that request only (a late reply is
  dropped by its unknown transaction id), so one dead unit behind a serial device
  server never closes the connection the healthy ones use.
- RTU: one request on the wire at a time, with the 3.5-character silence before each
  request; after any failure the bus stays silent for a guard time and stray bytes are
  discarded before the next request, so a late reply is never taken as the answer to
  the next one (RTU has no transaction id).

Every failure is one typed :class:`MeterIOError` (timeouts, exception replies, bad
frames, lost connections alike).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from enum import StrEnum
from typing import Protocol

import serial

from gateway.fine_sleep import sleep_until
from protocol.errors import DecodeError
from protocol.modbus import (
    ExceptionReplyError,
    Request,
    mbap_frame,
    parse_mbap_header,
    parse_reply_pdu,
    parse_rtu_reply,
    rtu_char_time,
    rtu_frame,
    rtu_reply_length,
    rtu_silence,
)

log = logging.getLogger(__name__)


class IOFailure(StrEnum):
    TIMEOUT = "timeout"
    EXCEPTION = "exception"
    GARBLED = "garbled"
    CONNECTION = "connection"
    #: a whole frame whose values no real meter reports (not a number, out of range)
    INVALID_VALUE = "invalid_value"


class MeterIOError(Exception):
    """A request to one unit failed; ``kind`` says how, ``cause`` says what was seen."""

    def __init__(self, unit: int, kind: IOFailure, cause: str) -> None:
        self.unit = unit
        self.kind = kind
        self.cause = cause
        super().__init__(f"unit {unit}: {kind}: {cause}")


class BusUnreachableError(MeterIOError):
    """The bus itself cannot be opened (serial device) or connected (TCP endpoint, or
    ``socket://``): no meter on it can answer. ``reason`` says which and the OS's why."""

    def __init__(self, unit: int, reason: str) -> None:
        self.reason = reason
        super().__init__(unit, IOFailure.CONNECTION, reason)


def os_reason(exc: BaseException) -> str:
    """The operating system's words for ``exc`` ("Connection refused", "No such file or
    directory"), without Python's decoration."""
    errno = getattr(exc, "errno", None)
    if isinstance(errno, int) and errno > 0:
        return os.strerror(errno)
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


class ModbusPort(Protocol):
    """What a poller needs from a bus."""

    name: str

    async def request(self, request: Request) -> tuple[int, ...]: ...

    async def close(self) -> None: ...


# ---------------------------------------------------------------------------- TCP


class _MbapStream(asyncio.Protocol):
    """One TCP connection of a :class:`TcpPort`: bytes in go to the port, frames out are
    gathered and written once per loop iteration (one send for a burst of requests)."""

    def __init__(self, port: TcpPort) -> None:
        self.port = port
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        #: a reply header arrived and its PDU has not (yet) all followed
        self.mid_frame = False
        self.outgoing: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.port._received(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.port._detach(self, str(exc) if exc is not None else "connection closed by peer")

    def send(self, frame: bytes) -> None:
        if not self.outgoing:
            asyncio.get_running_loop().call_soon(self._flush)
        self.outgoing.append(frame)

    def _flush(self) -> None:
        data = b"".join(self.outgoing)
        self.outgoing.clear()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()


#: a reply matched in a chunk of data, used only when the whole chunk is in step
_Taken = tuple[Request, "asyncio.Future[bytes]", bytes]
#: requests given up (timed out) whose late replies are recognised and dropped
LATE_REPLIES_KEPT = 256


class TcpPort:
    """Modbus TCP to one endpoint, pipelined up to ``concurrency`` requests.

    A reply resolves its request's future straight from ``data_received``; timeouts
    share one timer per port (every request has the same timeout, so deadlines expire
    in the order requests were sent): no task, stream reader or timer per request.
    """

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        *,
        concurrency: int = 4,
        timeout: float = 1.0,
        connect_timeout: float = 3.0,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._free = concurrency  # the in-flight window: free slots, then waiters in order
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._connect_lock = asyncio.Lock()
        self._stream: _MbapStream | None = None
        self._pending: dict[int, tuple[Request, asyncio.Future[bytes]]] = {}
        self._deadlines: deque[tuple[float, int, asyncio.Future[bytes]]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._next_tid = 1
        #: transaction id -> request, of requests given up while their reply may come
        self._late: dict[int, Request] = {}
        self.stray_replies = 0
        self.resets = 0

    @property
    def _writer(self) -> asyncio.Transport | None:
        """The connection in use (None between connections)."""
        return self._stream.transport if self._stream is not None else None

    async def _connect(self, unit: int) -> _MbapStream:
        async with self._connect_lock:
            stream = self._stream
            if stream is not None and not stream.closing():
                return stream
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self.connect_timeout):
                    _, stream = await loop.create_connection(
                        lambda: _MbapStream(self), self.host, self.port
                    )
            except (OSError, TimeoutError) as exc:
                raise BusUnreachableError(
                    unit, f"cannot connect to {self.host}:{self.port}: {os_reason(exc)}"
                ) from exc
            self._stream = stream
            return stream

    def _received(self, stream: _MbapStream, data: bytes) -> None:
        """Match every complete reply in the stream to its request.

        A reply is taken only whole and in step: its header must name a transaction in
        flight, the unit asked, and exactly the length a reply to that request has (or an
        exception reply's); a known transaction with another unit or length fails that
        request alone. A late reply to a request already given up is dropped. A header
        naming no transaction we sent means the stream is out of step (a truncated reply
        spliced with the next one, garbage): the connection is dropped, and no reply
        decoded from this data is used, since the splice may sit in any of them."""
        if stream is not self._stream:
            return  # a connection already given up: nothing it says is trusted
        buf = stream.buffer + data if stream.buffer else data
        pending = self._pending
        pos, size = 0, len(buf)
        taken: list[_Taken] = []
        while size - pos >= 7:
            header = buf[pos : pos + 7]
            try:
                tid, length, unit = parse_mbap_header(header)
            except DecodeError as exc:
                self._out_of_step(stream, taken, str(exc))
                return
            entry = pending.get(tid)
            if entry is None and tid not in self._late:
                self._out_of_step(stream, taken, f"reply with unknown transaction {tid}")
                return
            end = pos + 7 + length
            if end > size:
                break
            pdu = buf[pos + 7 : end]
            pos = end
            if entry is None:
                self.stray_replies += 1  # a late reply to a request already failed
                del self._late[tid]
                continue
            del pending[tid]
            request, fut = entry
            if request.unit != unit or length not in (request.reply_pdu_length(), 2):
                # In step (a known transaction) but not an answer to what was asked: that
                # request fails, never misattributed; the stream goes on.
                self.stray_replies += 1
                if not fut.done():
                    fut.set_exception(
                        MeterIOError(
                            request.unit,
                            IOFailure.GARBLED,
                            f"reply from unit {unit} with {length} bytes",
                        )
                    )
                continue
            taken.append((request, fut, pdu))
        stream.buffer = buf[pos:] if pos else buf
        stream.mid_frame = size > pos
        for _request, fut, pdu in taken:
            if not fut.done():
                fut.set_result(pdu)

    def _out_of_step(self, stream: _MbapStream, taken: list[_Taken], why: str) -> None:
        self.resets += 1
        for request, fut, _pdu in taken:
            if not fut.done():
                fut.set_exception(
                    MeterIOError(request.unit, IOFailure.GARBLED, f"stream out of step: {why}")
                )
        self._drop(stream, f"stream out of step: {why}")

    def _given_up(self, tid: int, request: Request) -> None:
        """Remember a request that failed while its reply may still come (bounded)."""
        late = self._late
        late[tid] = request
        if len(late) > LATE_REPLIES_KEPT:
            del late[next(iter(late))]

    def _detach(self, stream: _MbapStream, reason: str) -> None:
        """The connection is gone (or given up): every request in flight on it fails."""
        if stream is not self._stream:
            return
        self._stream = None
        pending = list(self._pending.values())
        self._pending.clear()
        self._late.clear()  # a new connection: no late reply can come on it
        for req, fut in pending:
            if not fut.done():
                fut.set_exception(MeterIOError(req.unit, IOFailure.CONNECTION, reason))

    def _drop(self, stream: _MbapStream, reason: str) -> None:
        self._detach(stream, reason)
        if stream.transport is not None:
            stream.transport.close()

    def _expire(self) -> None:
        """The timer: fail the requests past their deadline, re-arm for the next one."""
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadlines = self._deadlines
        while deadlines:
            deadline, tid, fut = deadlines[0]
            if fut.done():
                deadlines.popleft()
                continue
            if deadline > now:
                break
            deadlines.popleft()
            entry = self._pending.pop(tid, None)
            unit = entry[0].unit if entry is not None else 0
            if entry is not None:
                self._given_up(tid, entry[0])
            stream = self._stream
            if stream is not None and stream.mid_frame:
                # A frame started and never finished: the stream cannot be trusted to be
                # in step any more, so start a fresh connection.
                fut.set_exception(MeterIOError(unit, IOFailure.GARBLED, "reply truncated"))
                self.resets += 1
                self._drop(stream, "connection closed by peer")
            else:
                fut.set_exception(
                    MeterIOError(unit, IOFailure.TIMEOUT, f"no reply within {self.timeout}s")
                )
        if deadlines:
            self._timer = loop.call_at(deadlines[0][0], self._expire)

    async def _slot(self) -> None:
        """Wait for a free place in the in-flight window (first come, first served)."""
        waiter = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot while being cancelled: pass it on
            raise

    def _release(self) -> None:
        waiters = self._slot_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1

    async def request(self, request: Request) -> tuple[int, ...]:
        if self._free > 0:
            self._free -= 1
        else:
            await self._slot()
        try:
            stream = self._stream
            if stream is None or stream.closing():
                stream = await self._connect(request.unit)
            loop = asyncio.get_running_loop()
            tid = self._next_tid
            while tid in self._late or tid in self._pending:  # never reuse one still awaited
                tid = (tid % 0xFFFF) + 1
            self._next_tid = (tid % 0xFFFF) + 1
            fut: asyncio.Future[bytes] = loop.create_future()
            self._pending[tid] = (request, fut)
            stream.send(mbap_frame(tid, request.unit, request.pdu()))
            deadlines = self._deadlines
            while deadlines and deadlines[0][2].done():
                deadlines.popleft()  # answered already (most are): keep the queue short
            deadline = loop.time() + self.timeout
            deadlines.append((deadline, tid, fut))
            if self._timer is None:
                self._timer = loop.call_at(deadline, self._expire)
            try:
                pdu = await fut
            except asyncio.CancelledError:
                entry = self._pending.get(tid)
                if entry is not None and entry[1] is fut:
                    del self._pending[tid]
                    self._given_up(tid, request)
                raise
        finally:
            self._release()
        try:
            return parse_reply_pdu(request, pdu)
        except ExceptionReplyError as exc:
            raise MeterIOError(request.unit, IOFailure.EXCEPTION, str(exc)) from exc
        except DecodeError as exc:
            raise MeterIOError(request.unit, IOFailure.GARBLED, str(exc)) from exc

    async def close(self) -> None:
        stream = self._stream
        if stream is not None:
            self._drop(stream, "connection closed by peer")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadlines.clear()


# ---------------------------------------------------------------------------- RTU


class _ByteLine:
    """Bytes arriving from a serial line or a TCP socket, buffered, with deadlines."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self._arrived = asyncio.Event()
        self.last_activity = 0.0
        self.closed_reason: str | None = None

    def feed(self, data: bytes) -> None:
        self.buffer += data
        self.last_activity = time.monotonic()
        self._arrived.set()

    def lost(self, reason: str) -> None:
        self.closed_reason = reason
        self._arrived.set()

    async def read_exact(self, n: int, deadline: float) -> bytes | None:
        """``n`` bytes, or ``None`` at the deadline."""
        while len(self.buffer) < n:
            if self.closed_reason is not None:
                raise ConnectionError(self.closed_reason)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    def discard(self) -> int:
        n = len(self.buffer)
        self.buffer.clear()
        return n


class _LineProtocol(asyncio.Protocol):
    """RTU over TCP (``socket://``): bytes go straight to the line as they arrive, with
    no reader task between (one loop iteration less per reply)."""

    def __init__(self, line: _ByteLine) -> None:
        self.line = line
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.line.feed(data)

    def eof_received(self) -> bool:
        self.line.lost("connection closed by peer")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.line.lost(str(exc) if exc is not None else "connection closed by peer")
        if not self.closed.done():
            self.closed.set_result(None)


class RtuPort:
    """Modbus RTU master on one line: a serial device path or ``socket://host:port``."""

    def __init__(
        self,
        name: str,
        device: str,
        *,
        baud: int = 9600,
        timeout: float = 0.5,
        guard: float | None = None,
        parity: str = "N",
        stopbits: int = 1,
    ) -> None:
        self.name = name
        self.device = device
        self.baud = baud
        self.timeout = timeout
        self.parity = parity
        self.stopbits = stopbits
        self.char_time = rtu_char_time(baud)
        self.silence = rtu_silence(baud)
        # Long enough for the longest reply a slow meter could still be sending.
        self.guard = guard if guard is not None else max(0.05, 260 * self.char_time)
        self._lock = asyncio.Lock()
        self._line: _ByteLine | None = None
        self._transport: asyncio.WriteTransport | None = None
        self._protocol: _LineProtocol | None = None
        self._serial: object | None = None
        self._fd: int | None = None
        self.discarded_bytes = 0

    async def _open(self, unit: int) -> _ByteLine:
        if self._line is not None and self._line.closed_reason is None:
            return self._line
        await self._close_transport()
        line = _ByteLine()
        loop = asyncio.get_running_loop()
        try:
            if self.device.startswith("socket://"):
                host, _, port = self.device.removeprefix("socket://").rpartition(":")
                async with asyncio.timeout(3.0):
                    self._transport, self._protocol = await loop.create_connection(
                        lambda: _LineProtocol(line), host, int(port)
                    )
            else:
                ser = serial.Serial(
                    self.device,
                    baudrate=self.baud,
                    parity=self.parity,
                    stopbits=self.stopbits,
                    bytesize=8,
                    timeout=0,
                    write_timeout=0,
                )
                self._serial = ser
                fd = ser.fileno()
                self._fd = fd

                def readable() -> None:
                    try:
                        data = os.read(fd, 4096)
                    except BlockingIOError:
                        return
                    except OSError as exc:
                        loop.remove_reader(fd)
                        line.lost(str(exc))
                        return
                    if data:
                        line.feed(data)

                loop.add_reader(fd, readable)
        except (OSError, ValueError, TimeoutError) as exc:
            raise BusUnreachableError(unit, f"cannot open {self.device}: {os_reason(exc)}") from exc
        self._line = line
        return line

    def _write(self, frame: bytes) -> None:
        if self._transport is not None:
            self._transport.write(frame)
        elif self._fd is not None:
            view = memoryview(frame)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]

    async def request(self, request: Request) -> tuple[int, ...]:
        async with self._lock:
            line = await self._open(request.unit)
            # asyncio.sleep would round the silence up to whole milliseconds (+0.7 ms
            # of a 9 ms exchange at 115200 baud); sleep_until keeps it to ~0.1 ms.
            await sleep_until(line.last_activity + self.silence)
            self.discarded_bytes += line.discard()
            frame = rtu_frame(request.unit, request.pdu())
            try:
                self._write(frame)
            except OSError as exc:
                line.lost(str(exc))
                raise MeterIOError(request.unit, IOFailure.CONNECTION, str(exc)) from exc
            line.last_activity = time.monotonic()
            # Time for our request and the longest normal reply on the wire, plus the timeout.
            wire = (len(frame) + 1 + request.reply_pdu_length() + 2) * self.char_time
            deadline = time.monotonic() + wire + self.timeout
            try:
                return await self._read_reply(line, request, deadline)
            except MeterIOError:
                await self._after_failure(line)
                raise

    async def _read_reply(
        self, line: _ByteLine, request: Request, deadline: float
    ) -> tuple[int, ...]:
        unit = request.unit
        try:
            head = await line.read_exact(2, deadline)
            if head is None:
                raise MeterIOError(unit, IOFailure.TIMEOUT, f"no reply within {self.timeout}s")
            total = rtu_reply_length(request, head)
            rest = await line.read_exact(total - 2, deadline + total * self.char_time)
            if rest is None:
                raise MeterIOError(unit, IOFailure.GARBLED, "reply truncated")
        except ConnectionError as exc:
            raise MeterIOError(unit, IOFailure.CONNECTION, str(exc)) from exc
        frame = head + rest
        try:
            values = parse_rtu_reply(request, frame)
        except ExceptionReplyError as exc:
            raise MeterIOError(unit, IOFailure.EXCEPTION, str(exc)) from exc
        except DecodeError as exc:
            raise MeterIOError(unit, IOFailure.GARBLED, str(exc)) from exc
        if line.buffer:  # bytes after a complete frame: garbage, not ours to trust
            await asyncio.sleep(self.silence)
            self.discarded_bytes += line.discard()
        return values

    async def _after_failure(self, line: _ByteLine) -> None:
        """Keep the bus silent for the guard time, then drop whatever arrived late."""
        await asyncio.sleep(self.guard)
        self.discarded_bytes += line.discard()

    async def _close_transport(self) -> None:
        if self._transport is not None and self._protocol is not None:
            self._transport.close()
            await self._protocol.closed  # the socket is closed in connection_lost
            self._transport = self._protocol = None
        if self._fd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._fd)
            self._fd = None
        if self._serial is not None:
            close = getattr(self._serial, "close", None)
            if close is not None:
                close()
            self._serial = None

    async def close(self) -> None:
        await self._close_transport()
        self._line = None
