"""A fault-injecting Modbus TCP proxy for tests: sits between the gateway and the
simulator on loopback and, reply by reply, drops, truncates, delays, resets or corrupts
the MBAP header (the part of a TCP frame a receiver can check) at set probabilities."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from collections import Counter
from dataclasses import dataclass, field

MBAP_LEN = 7


@dataclass
class FaultRates:
    """Probability of each fault per reply; the rest pass unchanged."""

    drop: float = 0.0  # no reply: the gateway times out
    truncate: float = 0.0  # half the frame, then nothing
    reset: float = 0.0  # the connection is reset instead of a reply
    header: float = 0.0  # the MBAP protocol id or length is corrupted
    delay: float = 0.0  # the reply comes `delay_s` late
    delay_s: float = 0.3


@dataclass
class FaultProxy:
    """``async with FaultProxy(upstream, rates) as proxy``: connect to ``proxy.address``."""

    upstream: tuple[str, int]
    rates: FaultRates
    seed: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def __aenter__(self) -> FaultProxy:
        self._rng = random.Random(self.seed)
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task
        await self._server.wait_closed()

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        forward = asyncio.create_task(self._requests(reader, up_writer))
        self._tasks.add(forward)
        try:
            await self._replies(up_reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            forward.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError, asyncio.IncompleteReadError):
                await forward
            self._tasks.discard(forward)
            for w in (writer, up_writer):
                w.close()
            self._tasks.discard(task)

    async def _requests(self, reader: asyncio.StreamReader, up: asyncio.StreamWriter) -> None:
        while data := await reader.read(4096):
            up.write(data)
            await up.drain()
        up.close()

    async def _replies(self, up: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            header = await up.readexactly(MBAP_LEN)
            body = await up.readexactly(int.from_bytes(header[4:6], "big") - 1)
            frame = header + body
            fault = self._pick()
            self.counts[fault] += 1
            if fault == "drop":
                continue
            if fault == "reset":
                transport = writer.transport
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    # Linger 0: close sends RST, as a crashing device would.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()
                return
            if fault == "truncate":
                frame = frame[: len(frame) // 2]
            elif fault == "header":
                frame = frame[:2] + b"\x12\x34" + frame[4:]
            elif fault == "delay":
                await asyncio.sleep(self.rates.delay_s)
            writer.write(frame)
            await writer.drain()

    def _pick(self) -> str:
        roll = self._rng.random()
        for name in ("drop", "truncate", "reset", "header", "delay"):
            rate = float(getattr(self.rates, name))
            if roll < rate:
                return name
            roll -= rate
        return "pass"
