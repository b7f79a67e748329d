"""Modbus RTU master on one line (a serial device or ``socket://``): the asyncio shell
around the pure :class:`~protocol.modbus.rtu_master.RtuMaster`, which keeps the
silence before each request, the deadlines and the guard time after a failure.

The shell feeds the session the line's bytes and the monotonic time, turns its events
into the caller's result, writes what it says to send and re-arms one fine timer (a
timerfd: the 1.75 ms silence at 115,200 baud is kept to about 0.1 ms, not rounded up to
whole milliseconds). Callers take turns (a lock): one request on the wire at a time.
"""

from __future__ import annotations

import asyncio
import time

from gateway.fine_sleep import FineTimer
from gateway.modbus_port.errors import BusUnreachableError, failed, os_reason
from gateway.serial_line import SerialLine
from protocol.modbus.events import ReplyReceived, StreamOutOfStep
from protocol.modbus.pdu import Request
from protocol.modbus.rtu_master import RtuMaster


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
        self.parity = parity
        self.stopbits = stopbits
        self.session = RtuMaster(baud=baud, timeout=timeout, guard=guard)
        self._lock = asyncio.Lock()
        self._line: SerialLine | None = None
        self._timer: FineTimer | None = None
        self._waiter: asyncio.Future[tuple[int, ...]] | None = None
        self._handle = 0

    # The line's arithmetic, as the session keeps it (a scan's estimate reads it).
    @property
    def timeout(self) -> float:
        return self.session.timeout

    @property
    def char_time(self) -> float:
        return self.session.char_time

    @property
    def silence(self) -> float:
        return self.session.silence

    @property
    def guard(self) -> float:
        return self.session.guard

    @property
    def discarded_bytes(self) -> int:
        return self.session.discarded_bytes

    async def _open(self, unit: int) -> None:
        line = self._line
        if line is not None and line.lost_reason is None:
            return
        if line is not None:
            self._line = None
            await line.close()
        line = SerialLine(
            self.device,
            baud=self.baud,
            parity=self.parity,
            stopbits=self.stopbits,
            on_data=self._on_data,
            on_lost=self._on_lost,
        )
        try:
            await line.open()
        except (OSError, ValueError, TimeoutError) as exc:
            raise BusUnreachableError(unit, f"cannot open {self.device}: {os_reason(exc)}") from exc
        self._line = line
        if self._timer is None:
            self._timer = FineTimer(self._on_timer)

    async def request(self, request: Request) -> tuple[int, ...]:
        async with self._lock:
            await self._open(request.unit)
            waiter: asyncio.Future[tuple[int, ...]] = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            self._handle = self.session.send_request(request, time.monotonic())
            self._deliver_and_transmit()
            try:
                return await waiter
            except asyncio.CancelledError:
                self.session.abandon(self._handle, time.monotonic())
                self._deliver_and_transmit()
                raise
            finally:
                self._waiter = None

    def _on_data(self, data: bytes) -> None:
        self.session.receive_data(data, time.monotonic())
        self._deliver_and_transmit()

    def _on_lost(self, reason: str) -> None:
        self.session.connection_lost(reason)
        self._deliver_and_transmit()

    def _on_timer(self) -> None:
        self.session.handle_timer(time.monotonic())
        self._deliver_and_transmit()

    def _deliver_and_transmit(self) -> None:
        """After every input to the session: its events to the caller, its bytes to the
        line, its next time to the timer (aioquic's ``_process_events`` and ``transmit``)."""
        session = self.session
        while (event := session.next_event()) is not None:
            waiter = self._waiter
            if waiter is None or waiter.done() or isinstance(event, StreamOutOfStep):
                continue  # nobody waits for it any more (an RTU line is never out of step)
            if event.handle != self._handle:
                continue
            if isinstance(event, ReplyReceived):
                waiter.set_result(event.values)
            else:
                waiter.set_exception(failed(event))
        data = session.data_to_send()
        line = self._line
        if data and line is not None:
            try:
                self._write(data)
            except OSError as exc:
                line.lost(str(exc))  # fails the request through _on_lost
        if self._timer is not None:
            self._timer.arm(session.get_timer())

    def _write(self, frame: bytes) -> None:
        assert self._line is not None
        self._line.write(frame)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        line, self._line = self._line, None
        if line is not None:
            await line.close()
        self.session.connection_lost("port closed")
        self._deliver_and_transmit()
