"""Modbus TCP to one endpoint: the asyncio shell around the pure
:class:`~protocol.modbus.tcp_master.TcpMaster` (which matches replies, keeps deadlines
and decides when the stream is out of step).

The shell feeds each session the bytes and the loop's time, turns its events into the
callers' results, writes its frames once per loop iteration (one send for a burst of
requests) and keeps one timer per connection: no task, stream reader or timer per
request. It also keeps the in-flight window (``concurrency``) and spreads it over up to
``connections`` connections, each its own session: meters in the field and serial device
servers answer one request at a time per connection, so concurrency comes from more
connections, opened as the load needs them; a request goes to the connection with the
fewest in flight, and only a window wider than the connections pipelines. A device that
resets a new connection at once (its connection limit) is taken at its word: the port
keeps to the connections it has for a while (``REGROW_AFTER``) before trying again.
"""

from __future__ import annotations

import asyncio
from collections import deque

from gateway.modbus_port.errors import (
    BusUnreachableError,
    IOFailure,
    MeterIOError,
    failed,
    os_reason,
)
from protocol.modbus.events import ReplyReceived, RequestFailed
from protocol.modbus.pdu import Request
from protocol.modbus.tcp_master import TcpMaster

#: Seconds a port keeps to fewer connections after the device refused one.
REGROW_AFTER = 300.0


class _Connection(asyncio.Protocol):
    """One TCP connection of a :class:`TcpPort` and its session."""

    def __init__(self, port: TcpPort) -> None:
        self.port = port
        self.session = TcpMaster(timeout=port.timeout)
        self.transport: asyncio.Transport | None = None
        self.waiters: dict[int, asyncio.Future[tuple[int, ...]]] = {}
        self._loop = asyncio.get_running_loop()
        self._flush_due = False
        self._timer: asyncio.TimerHandle | None = None
        self.answered = False  # a reply came: the device took this connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.answered = True
        self.session.receive_data(data, self._loop.time())
        self._process_events()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answered and self.session.broken is None:
            self.port._refused(self)  # reset before any reply: at the device's limit
        self.drop(str(exc) if exc is not None else "connection closed by peer")

    def closing(self) -> bool:
        transport = self.transport
        return transport is None or transport.is_closing() or self.session.broken is not None

    def send(self, request: Request) -> tuple[int, asyncio.Future[tuple[int, ...]]]:
        """Queue ``request``; its handle and the future its outcome completes."""
        session = self.session
        handle = session.send_request(request, self._loop.time())
        waiter: asyncio.Future[tuple[int, ...]] = self._loop.create_future()
        self.waiters[handle] = waiter
        if self._flush_due:
            pass  # joins the burst going out this loop iteration
        elif session.in_flight == 1:
            self._flush()  # alone on the connection (the usual case): out now, no callback
        else:
            self._flush_due = True
            self._loop.call_soon(self._flush)
        if self._timer is None:
            self._arm()
        return handle, waiter

    def abandon(self, handle: int) -> None:
        self.waiters.pop(handle, None)
        self.session.abandon(handle)

    def drop(self, reason: str) -> None:
        """Give the connection up: every request in flight fails with ``reason``."""
        self.session.connection_lost(reason)
        self._process_events()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.port._detach(self)
        if self.transport is not None:
            self.transport.close()

    def _flush(self) -> None:
        self._flush_due = False
        data = self.session.data_to_send()
        if data and not self.closing():
            assert self.transport is not None
            self.transport.write(data)

    def _arm(self) -> None:
        when = self.session.get_timer()
        if when is not None:
            self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.session.handle_timer(self._loop.time())
        self._process_events()
        if self._timer is None and self.session.broken is None:
            self._arm()

    def _process_events(self) -> None:
        session, waiters = self.session, self.waiters
        while (event := session.next_event()) is not None:
            if isinstance(event, ReplyReceived):
                waiter = waiters.pop(event.handle, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(event.values)
            elif isinstance(event, RequestFailed):
                waiter = waiters.pop(event.handle, None)
                if waiter is not None and not waiter.done():
                    waiter.set_exception(failed(event))
            else:  # StreamOutOfStep: the session has failed every request in flight
                self.port.resets += 1
                self.drop(event.reason)


class TcpPort:
    """Modbus TCP to one endpoint: up to ``concurrency`` requests in flight over up to
    ``connections`` connections."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        *,
        concurrency: int = 4,
        connections: int = 1,
        timeout: float = 1.0,
        connect_timeout: float = 3.0,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.connections = connections
        self._free = concurrency  # the in-flight window: free slots, then waiters in order
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._connect_lock = asyncio.Lock()
        self._conns: list[_Connection] = []
        self._cap = connections  # connections we may open now (fewer after a refusal)
        self._cap_until = 0.0
        self._retired_strays = 0
        #: connections opened so far
        self.connects = 0
        #: connections dropped because their stream went out of step
        self.resets = 0
        #: connections the device reset before answering (its connection limit)
        self.refusals = 0

    @property
    def stray_replies(self) -> int:
        """Late replies dropped and replies that answered another question."""
        return self._retired_strays + sum(c.session.stray_replies for c in self._conns)

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    def _pick(self) -> _Connection | None:
        """The open connection with the fewest requests in flight; None if a new one
        should be opened (every open one is busy and the cap allows another)."""
        best: _Connection | None = None
        least = 0
        for conn in self._conns:
            if conn.closing():
                continue
            n = conn.session.in_flight
            if n == 0:
                return conn
            if best is None or n < least:
                best, least = conn, n
        if self._cap < self.connections and asyncio.get_running_loop().time() >= self._cap_until:
            self._cap = self.connections  # time to try the device's limit again
        if len(self._conns) < self._cap:
            return None
        return best

    async def _connect(self, unit: int) -> _Connection:
        async with self._connect_lock:
            conn = self._pick()  # another request may have opened one meanwhile
            if conn is not None:
                return conn
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self.connect_timeout):
                    _, conn = await loop.create_connection(
                        lambda: _Connection(self), self.host, self.port
                    )
            except (OSError, TimeoutError) as exc:
                raise BusUnreachableError(
                    unit, f"cannot connect to {self.host}:{self.port}: {os_reason(exc)}"
                ) from exc
            if not conn.closing():
                self._conns.append(conn)
            self.connects += 1
            return conn

    def _refused(self, conn: _Connection) -> None:
        """The device reset ``conn`` before answering: keep to the others for a while."""
        self.refusals += 1
        others = sum(1 for c in self._conns if c is not conn)
        if others:
            self._cap = others
            self._cap_until = asyncio.get_running_loop().time() + REGROW_AFTER

    def _detach(self, conn: _Connection) -> None:
        if conn in self._conns:
            self._conns.remove(conn)
            self._retired_strays += conn.session.stray_replies

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
            conn = self._pick()
            if conn is None:
                conn = await self._connect(request.unit)
                if conn.closing():  # reset as soon as it was opened
                    reason = conn.session.broken or "connection closed by peer"
                    raise MeterIOError(request.unit, IOFailure.CONNECTION, reason)
            handle, waiter = conn.send(request)
            try:
                return await waiter
            except asyncio.CancelledError:
                conn.abandon(handle)
                raise
        finally:
            self._release()

    async def close(self) -> None:
        for conn in list(self._conns):
            conn.drop("port closed")
