"""The gateway's DL/T 645-2007 port: one RS-485 bus (a serial device or ``socket://``).

Our own transport on the codec of :mod:`protocol.dlt645` (the ``dlt645`` package would
not do, see that package's opening comment), with the discipline of the Modbus
:class:`~gateway.modbus_port.RtuPort`, because DL/T 645 has no transaction id either:

- one request on the wire at a time, each after wake-up bytes (``FE``) and a short
  quiet time since the line last spoke;
- a reply is charged to a request only when it is a valid frame from the address asked,
  answering the function asked (and, for a read, the identifier asked); anything else
  fails the request and is never attributed;
- after a failure the bus stays silent for a guard time (the longest frame a slow meter
  could still be sending) and whatever arrived is dropped before the next request;
- a meter's refusal (an error reply, D1H, DCH, ...) is a clean exchange: a typed error
  with the error word, no guard.

Every failure is one :class:`Dlt645IOError` (a :class:`~gateway.modbus_port.MeterIOError`,
so pollers handle both protocols alike), but a line that cannot be opened, which is a
:class:`~gateway.modbus_port.BusUnreachableError` as for Modbus.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway import dlt645_line
from gateway.fine_sleep import sleep_until
from gateway.modbus_port import BusUnreachableError, IOFailure, MeterIOError, os_reason
from gateway.serial_line import SerialLine
from protocol.dlt645.clock import MeterTime
from protocol.dlt645.credentials import OperatorCode, Password
from protocol.dlt645.frame import BROADCAST, MAX_DATA, OVERHEAD, PREAMBLE, Address, Deframer, Frame
from protocol.dlt645.messages import (
    BroadcastTime,
    ControlReply,
    ControlRequest,
    ErrorReply,
    PayloadError,
    ReadAddressReply,
    ReadAddressRequest,
    ReadFollowUpReply,
    ReadFollowUpRequest,
    ReadReply,
    ReadRequest,
    Reply,
    WriteReply,
    WriteRequest,
    decode_reply,
)
from protocol.dlt645.terms import ControlCommand, ErrorWord, di_text

log = logging.getLogger(__name__)

#: Bits per character: start, 8 data, even parity, stop (8E1, the standard's framing).
BITS_PER_CHAR = 11
#: Follow-up frames one read may take before the meter is considered broken.
MAX_FOLLOW_UPS = 32
#: Longest silence between two bytes of one frame the standard allows.
BYTE_GAP = 0.5


class Dlt645IOError(MeterIOError):
    """A request to one meter failed; ``kind`` says how, ``error`` is a refusal's error word."""

    def __init__(
        self, address: Address, kind: IOFailure, cause: str, error: ErrorWord | None = None
    ) -> None:
        super().__init__(address.number if address.is_bcd else 0, kind, cause)
        self.address = address
        self.error = error
        self.args = (str(self),)

    def __str__(self) -> str:
        return f"meter {self.address}: {self.kind}: {self.cause}"


class Dlt645Port:
    """DL/T 645 master on one line: a serial device path or ``socket://host:port``."""

    def __init__(
        self,
        name: str,
        device: str,
        *,
        baud: int = dlt645_line.BAUD,
        parity: str = dlt645_line.PARITY,
        stopbits: int = 1,
        timeout: float = dlt645_line.REPLY_TIMEOUT_S,
        guard: float | None = None,
        preamble: int = PREAMBLE,
        quiet: float | None = None,
    ) -> None:
        if not 0 <= preamble <= 4:
            raise ValueError(f"preamble {preamble} outside 0..4")
        self.name = name
        self.device = device
        self.baud = baud
        self.parity = parity
        self.stopbits = stopbits
        #: how long a meter may take to start its reply (the standard allows 500 ms)
        self.timeout = timeout
        self.preamble = preamble
        self.char_time = BITS_PER_CHAR / baud
        #: quiet time since the line last spoke before we send (lets drivers turn around)
        self.quiet = quiet if quiet is not None else self.char_time
        # Long enough for the longest frame a slow meter could still be sending.
        longest = 4 + OVERHEAD + MAX_DATA
        self.guard = guard if guard is not None else max(0.1, longest * self.char_time)
        self._lock = asyncio.Lock()
        self._deframer = Deframer()
        self._waiter: asyncio.Future[Frame] | None = None
        self._noise_mark = 0  # bytes the deframer had skipped when the request went out
        self._line: SerialLine | None = None
        self._last_activity = 0.0
        self.discarded_bytes = 0
        self.stray_frames = 0

    # ------------------------------------------------------------------ line

    def _received(self, data: bytes) -> None:
        self._last_activity = time.monotonic()
        for frame in self._deframer.feed(data):
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(frame)
            else:
                self.stray_frames += 1

    def _lost(self, reason: str) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError(reason))

    async def _open(self, address: Address) -> None:
        line = self._line
        if line is not None and line.lost_reason is None:
            return
        await self._close_line()
        self._deframer.reset()
        line = SerialLine(
            self.device,
            baud=self.baud,
            parity=self.parity,
            stopbits=self.stopbits,
            on_data=self._received,
            on_lost=self._lost,
        )
        try:
            await line.open()
        except (OSError, ValueError, TimeoutError) as exc:
            # As the Modbus ports: the bus itself is down (the poller reports it once, as a
            # bus fault, not as every meter's failure).
            unit = address.number if address.is_bcd else 0
            raise BusUnreachableError(unit, f"cannot open {self.device}: {os_reason(exc)}") from exc
        self._line = line

    def _write(self, data: bytes) -> None:
        assert self._line is not None
        self._line.write(data)

    def _discard(self) -> None:
        self.discarded_bytes += self._deframer.reset()

    # ------------------------------------------------------------------ exchanges

    async def _send(
        self, address: Address, frame: Frame, waiter: asyncio.Future[Frame] | None = None
    ) -> float:
        """Put one frame on the line after the quiet time; returns when it was written.
        ``waiter`` gets the first frame that arrives after it."""
        await self._open(address)
        await sleep_until(self._last_activity + self.quiet)
        self._discard()  # whatever came before our request is not an answer to it
        self._noise_mark = self._deframer.discarded
        self._waiter = waiter
        raw = frame.to_bytes(self.preamble)
        try:
            self._write(raw)
        except OSError as exc:
            assert self._line is not None
            self._line.lost(str(exc))
            raise Dlt645IOError(address, IOFailure.CONNECTION, str(exc)) from exc
        sent = time.monotonic()
        self._last_activity = sent + len(raw) * self.char_time  # on the wire until then
        return sent

    async def _exchange(
        self, address: Address, frame: Frame, *, any_address: bool = False
    ) -> Reply:
        """One request and its reply, checked against what was asked."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Frame] = loop.create_future()
        try:
            sent = await self._send(address, frame, waiter)
            wire = (self.preamble + frame.wire_size) * self.char_time
            reply_frame = await self._wait(address, waiter, sent + wire + self.timeout)
        finally:
            self._waiter = None
        if not any_address and reply_frame.address != address:
            raise Dlt645IOError(
                address, IOFailure.GARBLED, f"a reply from meter {reply_frame.address}"
            )
        if reply_frame.function != frame.function or not reply_frame.is_reply:
            raise Dlt645IOError(
                address, IOFailure.GARBLED, f"control code {reply_frame.control:02X} in reply"
            )
        try:
            reply = decode_reply(reply_frame)
        except PayloadError as exc:
            raise Dlt645IOError(address, IOFailure.GARBLED, str(exc)) from exc
        if isinstance(reply, ErrorReply):
            raise Dlt645IOError(
                address,
                IOFailure.EXCEPTION,
                f"refused ({', '.join(reply.reasons)})",
                reply.error,
            )
        return reply

    async def _wait(
        self, address: Address, waiter: asyncio.Future[Frame], deadline: float
    ) -> Frame:
        """The first frame on the line, or a typed failure at the deadline (extended while a
        frame is still arriving, never past the time the longest frame takes)."""
        latest = deadline + self.guard + BYTE_GAP
        while not waiter.done():
            remaining = deadline - time.monotonic()
            if remaining > 0:
                await asyncio.wait((waiter,), timeout=remaining)
                continue
            missing = self._deframer.missing()
            now = time.monotonic()
            if missing is not None and now - self._last_activity < BYTE_GAP and now < latest:
                arriving = max(now, self._last_activity) + (missing + 1) * self.char_time
                deadline = min(latest, arriving + 0.05)
                continue
            if missing is not None:
                raise Dlt645IOError(address, IOFailure.GARBLED, "reply truncated")
            if self._deframer.discarded > self._noise_mark or self._deframer.buffered:
                raise Dlt645IOError(address, IOFailure.GARBLED, "noise instead of a reply")
            raise Dlt645IOError(address, IOFailure.TIMEOUT, f"no reply within {self.timeout}s")
        try:
            return waiter.result()
        except ConnectionError as exc:
            raise Dlt645IOError(address, IOFailure.CONNECTION, str(exc)) from exc

    async def _guarded(self, address: Address, frame: Frame, *, any_address: bool = False) -> Reply:
        try:
            return await self._exchange(address, frame, any_address=any_address)
        except Dlt645IOError as exc:
            if exc.kind is not IOFailure.EXCEPTION:
                await self._after_failure()
            raise

    async def _after_failure(self) -> None:
        """Keep the bus silent for the guard time, then drop whatever arrived late."""
        await asyncio.sleep(self.guard)
        self._discard()

    # ------------------------------------------------------------------ the API

    async def read(self, address: Address, di: int) -> bytes:
        """The data of identifier ``di`` (its bytes after the DI, follow-up frames joined)."""
        async with self._lock:
            reply = await self._guarded(address, ReadRequest(address, di).to_frame())
            if not isinstance(reply, ReadReply) or reply.di != di:
                await self._after_failure()
                raise Dlt645IOError(address, IOFailure.GARBLED, f"reply is not for {di_text(di)}")
            data, follows, seq = reply.payload, reply.follows, 0
            while follows:
                seq += 1
                if seq > MAX_FOLLOW_UPS:
                    raise Dlt645IOError(address, IOFailure.GARBLED, "endless follow-up frames")
                request = ReadFollowUpRequest(address, di, seq).to_frame()
                more = await self._guarded(address, request)
                if not isinstance(more, ReadFollowUpReply) or more.di != di or more.seq != seq:
                    await self._after_failure()
                    raise Dlt645IOError(address, IOFailure.GARBLED, f"follow-up {seq} out of step")
                data += more.payload
                follows = more.follows
            return data

    async def write(
        self,
        address: Address,
        di: int,
        password: Password,
        operator: OperatorCode,
        payload: bytes,
    ) -> None:
        """Write identifier ``di`` (14H)."""
        async with self._lock:
            request = WriteRequest(address, di, password, operator, payload).to_frame()
            reply = await self._guarded(address, request)
            assert isinstance(reply, WriteReply)

    async def control(
        self,
        address: Address,
        password: Password,
        operator: OperatorCode,
        command: ControlCommand,
        valid_until: MeterTime,
    ) -> None:
        """Remote control (1CH): trip, allow close, close, alarm on/off, protect on/off.
        Sent once: a command that failed is the caller's to repeat or not."""
        async with self._lock:
            request = ControlRequest(address, password, operator, command, valid_until)
            reply = await self._guarded(address, request.to_frame())
            assert isinstance(reply, ControlReply)

    async def broadcast_time(self, now: MeterTime) -> None:
        """Set every meter's clock (08H to 99..99); no meter replies."""
        async with self._lock:
            sent = await self._send(BROADCAST, BroadcastTime(now).to_frame())
            frame_time = (self.preamble + OVERHEAD + 6) * self.char_time
            await sleep_until(sent + frame_time)

    async def read_address(self) -> Address:
        """The address of the one meter on a point-to-point link (13H to the wildcard).
        Several meters would answer at once: their replies collide (a GARBLED failure)."""
        async with self._lock:
            request = ReadAddressRequest().to_frame()
            reply = await self._guarded(request.address, request, any_address=True)
            assert isinstance(reply, ReadAddressReply)
            return reply.address

    async def _close_line(self) -> None:
        line, self._line = self._line, None
        if line is not None:
            await line.close()

    async def close(self) -> None:
        await self._close_line()
