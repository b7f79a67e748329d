"""Modbus TCP to one endpoint: the asyncio shell around the pure
:class:`~protocol.modbus.tcp_master.TcpMaster` (which matches replies, keeps deadlines
and decides when the stream is out of step).

The shell feeds the session the bytes and the loop's time, turns its events into the
callers' results, writes its frames once per loop iteration (one send for a burst of
requests) and keeps one timer per connection: no task, stream reader or timer per
request. It also keeps the in-flight window (``concurrency``): pipelining on one
connection is the point of driving the wire ourselves.
"""

from __future__ import annotations

import asyncio
from collections import deque

from gateway.modbus_port.errors import BusUnreachableError, failed, os_reason
from protocol.modbus.events import ReplyReceived, RequestFailed
from protocol.modbus.pdu import Request
from protocol.modbus.tcp_master import TcpMaster


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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.session.receive_data(data, self._loop.time())
        self._process_events()

    def connection_lost(self, exc: Exception | None) -> None:
        self.drop(str(exc) if exc is not None else "connection closed by peer")

    def closing(self) -> bool:
        transport = self.transport
        return transport is None or transport.is_closing() or self.session.broken is not None

    def send(self, request: Request) -> tuple[int, asyncio.Future[tuple[int, ...]]]:
        """Queue ``request``; its handle and the future its outcome completes."""
        handle = self.session.send_request(request, self._loop.time())
        waiter: asyncio.Future[tuple[int, ...]] = self._loop.create_future()
        self.waiters[handle] = waiter
        if not self._flush_due:
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
    """Modbus TCP to one endpoint, pipelined up to ``concurrency`` requests."""

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
        self._conn: _Connection | None = None
        self._retired_strays = 0
        #: connections opened so far
        self.connects = 0
        #: connections dropped because their stream went out of step
        self.resets = 0

    @property
    def stray_replies(self) -> int:
        """Late replies dropped and replies that answered another question."""
        conn = self._conn
        return self._retired_strays + (conn.session.stray_replies if conn is not None else 0)

    async def _connect(self, unit: int) -> _Connection:
        async with self._connect_lock:
            conn = self._conn
            if conn is not None and not conn.closing():
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
            self._conn = conn
            self.connects += 1
            return conn

    def _detach(self, conn: _Connection) -> None:
        if conn is self._conn:
            self._conn = None
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
            conn = self._conn
            if conn is None or conn.closing():
                conn = await self._connect(request.unit)
            handle, waiter = conn.send(request)
            try:
                return await waiter
            except asyncio.CancelledError:
                conn.abandon(handle)
                raise
        finally:
            self._release()

    async def close(self) -> None:
        conn = self._conn
        if conn is not None:
            conn.drop("port closed")
