"""One serial line as the gateway's RTU-style ports use it: a serial device path, or
``socket://host:port`` for RTU over TCP (a serial device server, or the simulator).

Bytes go to ``on_data`` as they arrive, straight from the event loop's reader callback
(no reader task between: one loop iteration less per reply); a line that fails or
closes goes to ``on_lost`` with the reason. Writes are synchronous: a serial driver or a
socket buffer takes a request at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

import serial

#: how long a ``socket://`` line may take to connect
CONNECT_TIMEOUT = 3.0


class _SocketLine(asyncio.Protocol):
    def __init__(self, line: SerialLine) -> None:
        self.line = line
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.line.on_data(data)

    def eof_received(self) -> bool:
        self.line.lost("connection closed by peer")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.line.lost(str(exc) if exc is not None else "connection closed by peer")
        if not self.closed.done():
            self.closed.set_result(None)


class SerialLine:
    """A line to open, write to and close; what arrives goes to the callbacks."""

    def __init__(
        self,
        device: str,
        *,
        baud: int,
        parity: str,
        stopbits: int,
        on_data: Callable[[bytes], None],
        on_lost: Callable[[str], None],
    ) -> None:
        self.device = device
        self.baud = baud
        self.parity = parity
        self.stopbits = stopbits
        self.on_data = on_data
        self._on_lost = on_lost
        #: why the line was lost; None while open (or never opened)
        self.lost_reason: str | None = None
        self._transport: asyncio.WriteTransport | None = None
        self._protocol: _SocketLine | None = None
        self._serial: serial.Serial | None = None
        self._fd: int | None = None

    async def open(self) -> None:
        """Open the device or connect the socket; raises ``OSError``, ``ValueError``
        (pyserial's refusal of a setting) or ``TimeoutError``."""
        loop = asyncio.get_running_loop()
        if self.device.startswith("socket://"):
            host, _, port = self.device.removeprefix("socket://").rpartition(":")
            async with asyncio.timeout(CONNECT_TIMEOUT):
                self._transport, self._protocol = await loop.create_connection(
                    lambda: _SocketLine(self), host, int(port)
                )
            return
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
        fd = self._fd = ser.fileno()

        def readable() -> None:
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                return
            except OSError as exc:
                loop.remove_reader(fd)
                self.lost(str(exc))
                return
            if data:
                self.on_data(data)

        loop.add_reader(fd, readable)

    def lost(self, reason: str) -> None:
        if self.lost_reason is None:
            self.lost_reason = reason or "connection lost"
            self._on_lost(self.lost_reason)

    def write(self, data: bytes) -> None:
        """Put ``data`` on the line; raises ``OSError`` when the line is gone."""
        if self._transport is not None:
            self._transport.write(data)
        elif self._fd is not None:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]

    async def close(self) -> None:
        """Close the line and wait until the socket is closed; nothing more arrives."""
        self.lost_reason = self.lost_reason or "closed"
        if self._transport is not None and self._protocol is not None:
            self._transport.close()
            await self._protocol.closed  # the socket is closed in connection_lost
        self._transport = self._protocol = None
        if self._fd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._fd)
            self._fd = None
        if self._serial is not None:
            self._serial.close()
            self._serial = None
