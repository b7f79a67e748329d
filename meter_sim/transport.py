"""The asyncio plumbing both simulators' buses share: TCP, the pty, the timed reply writer.

A session (Modbus :class:`~meter_sim.server.Session`, DL/T 645
:class:`~meter_sim.dlt645_server.Dlt645Session`) is one connection or the pty: it turns
the bytes that arrive into replies. What carries those bytes is the same for both, and
lives here once: :func:`serve_tcp` (one session a TCP connection), :class:`PtyLine`
(one session on a pseudo-terminal pair) and :class:`ReplyQueue` (replies written in
order, each when it would have finished arriving on a real line).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import socket
import struct
import termios
import time
import tty
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

#: Writes bytes to the peer.
Write = Callable[[bytes], None]
#: Drops the connection at once (a pty has none to drop).
Abort = Callable[[], None]

_RESET = b""  # queue marker: reset the connection here


class ByteSession(Protocol):
    """What the transports need of a session."""

    def feed(self, data: bytes) -> None: ...

    def connection_lost(self) -> None: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


S = TypeVar("S", bound=ByteSession)


class ReplyQueue:
    """Replies (or connection resets) written strictly in order, none before its due
    time (monotonic); one named task writes those that are not due yet."""

    def __init__(
        self,
        name: str,
        write: Write,
        on_reset: Callable[[], None],
        on_drained: Callable[[], None] | None = None,
    ) -> None:
        self._name = name
        self._write = write
        self._on_reset = on_reset  # a queued reset is due: the session closes itself
        self._on_drained = on_drained  # the writer caught up with every queued reply
        self._queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def waiting(self) -> bool:
        """A reply (or reset) is queued and not written yet."""
        return bool(self._queue)

    def push_reset(self) -> None:
        """Reset the connection once the replies queued before are written."""
        self.push(time.monotonic(), _RESET)

    def push(self, due: float, frame: bytes) -> None:
        """Write ``frame`` at ``due``, behind every reply queued before (at once if due
        and nothing waits)."""
        if self._queue:
            due = max(due, self._queue[-1][0])
        elif due <= time.monotonic() and frame:
            self._write(frame)
            return
        self._queue.append((due, frame))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush(), name=f"sim-reply:{self._name}"
            )

    async def _flush(self) -> None:
        while self._queue and not self._closed:
            due, frame = self._queue[0]
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._queue.popleft()
            if not frame:  # _RESET
                self._on_reset()
                return
            self._write(frame)
        if self._on_drained is not None:
            self._on_drained()

    def stop(self) -> None:
        """Drop what is queued and cancel the writer (unless it is the caller)."""
        self._closed = True
        self._queue.clear()
        flusher = self._flusher
        if flusher is not None and not flusher.done():
            try:
                current = asyncio.current_task()
            except RuntimeError:  # no running loop: nothing can be pending
                current = None
            if flusher is not current:
                flusher.cancel()

    async def wait_closed(self) -> None:
        """Wait for a cancelled writer to finish (no task left behind)."""
        if self._flusher is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher


def reset_abort(transport: asyncio.Transport) -> Abort:
    """An abort that resets the connection (linger 0: an RST), as a crashed device does."""
    sock = transport.get_extra_info("socket")

    def abort() -> None:
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    return abort


class _StreamProtocol(asyncio.Protocol, Generic[S]):
    """A TCP connection driving one session (None from ``accept``: refused, being reset)."""

    def __init__(self, accept: Callable[[asyncio.Transport], S | None], sessions: set[S]) -> None:
        self._accept = accept
        self._sessions = sessions
        self._session: S | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._session = self._accept(transport)
        if self._session is not None:
            self._sessions.add(self._session)

    def data_received(self, data: bytes) -> None:
        if self._session is not None:
            self._session.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._session is not None:
            self._session.connection_lost()
            self._sessions.discard(self._session)


async def serve_tcp(
    accept: Callable[[asyncio.Transport], S | None], host: str, port: int, sessions: set[S]
) -> asyncio.Server:
    """Listen on ``host:port``; ``accept`` makes each connection's session (or refuses
    it), which is kept in ``sessions`` while the connection lasts."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: _StreamProtocol(accept, sessions), host, port, reuse_address=True
    )


class _PtyReader(asyncio.Protocol, Generic[S]):
    def __init__(self, session: S) -> None:
        self._session = session

    def data_received(self, data: bytes) -> None:
        self._session.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._session.connection_lost()


class PtyLine(Generic[S]):
    """A serial line on a pseudo-terminal pair: the gateway opens :attr:`path` with
    pyserial; ``open_session(write, abort)`` makes the one session on our end."""

    def __init__(self, open_session: Callable[[Write, Abort], S]) -> None:
        self._open_session = open_session
        self._master, self._slave = os.openpty()
        tty.setraw(self._master, termios.TCSANOW)
        tty.setraw(self._slave, termios.TCSANOW)
        self.path = os.ttyname(self._slave)
        self._read_transport: asyncio.ReadTransport | None = None
        self._write_transport: asyncio.WriteTransport | None = None
        self.session: S | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        write_fd = os.dup(self._master)
        wt, _ = await loop.connect_write_pipe(
            asyncio.Protocol, os.fdopen(write_fd, "wb", buffering=0)
        )
        self._write_transport = wt
        session = self.session = self._open_session(wt.write, lambda: None)
        rt, _ = await loop.connect_read_pipe(
            lambda: _PtyReader(session), os.fdopen(self._master, "rb", buffering=0)
        )
        self._read_transport = rt

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
        if self._read_transport is not None:
            self._read_transport.close()
        else:
            os.close(self._master)
        if self._write_transport is not None:
            self._write_transport.close()
        os.close(self._slave)
