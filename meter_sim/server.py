"""The asyncio shell around the pure parts: Modbus TCP, RTU over TCP and RTU over a pty.

One :class:`Endpoint` is one port or serial bus: the unit ids it answers for (an offset
into the simulator's meter numbers), its framing and, for RTU, its emulated baud rate.
A :class:`Session` is one connection (or the pty): it feeds bytes to the pure reader,
asks the pure core for replies, lets the fault table damage or withhold them, and
writes them back strictly in request order. What carries the bytes (TCP, the pty, the
timed reply writer) is :mod:`meter_sim.transport`, shared with the DL/T 645 bus.

By default an endpoint behaves like meters and serial device servers in the field: one
request at a time per connection (a pipelined request waits until the previous reply is
written, each reply its own write), and at most ``max_connections`` connections (one
more is reset at once). ``pipelining=True`` answers a burst of pipelined requests in one
write, as few real devices do.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from meter_sim import transport
from meter_sim.clock import Clock
from meter_sim.faults import NORMAL, FaultTable, Outcome, corrupt
from meter_sim.pdu import SimMeter, answer
from meter_sim.registers import GATEWAY_TARGET_FAILED, MapLayout
from meter_sim.transport import PtyLine, ReplyQueue, reset_abort
from protocol.errors import DecodeError
from protocol.modbus.mbap import MbapReader, mbap_frame
from protocol.modbus.pdu import exception_pdu, is_write
from protocol.modbus.rtu import RtuReader, rtu_char_time, rtu_frame, rtu_silence

log = logging.getLogger(__name__)

Framing = Literal["tcp", "rtu"]
#: A partial RTU request older than this (or 3.5 characters, if longer) is noise.
RTU_STALE_PARTIAL = 0.1
#: Connections an endpoint accepts at once unless told otherwise (Modbus TCP meters and
#: serial device servers commonly take 4; one more is reset).
DEFAULT_MAX_CONNECTIONS = 4


@dataclass(slots=True)
class Endpoint:
    """One port or bus: which meters answer on it, how it frames, how fast its wire is."""

    name: str
    framing: Framing
    layout: MapLayout
    meters: dict[int, SimMeter]  # by unit id on this endpoint
    offset: int  # meter number = offset + unit id
    clock: Clock
    faults: FaultTable
    baud: int | None = None
    rng: random.Random = field(default_factory=random.Random)
    busy_until: float = 0.0  # monotonic time the (RTU) wire is free again
    requests: int = 0
    #: answer a burst of pipelined MBAP requests in one write (few real devices do)
    pipelining: bool = False
    #: connections accepted at once (None: no limit)
    max_connections: int | None = DEFAULT_MAX_CONNECTIONS
    connections: int = 0  # open now
    refused: int = 0  # connections reset for being over the limit

    def wire_time(self, request_len: int, reply_len: int) -> tuple[float, float]:
        """(seconds until the reply is fully on the wire, seconds the wire stays busy)."""
        if self.baud is None:
            return 0.0, 0.0
        char = rtu_char_time(self.baud)
        silence = rtu_silence(self.baud)
        done = request_len * char + silence + reply_len * char
        return done, done + silence

    def respond(self, unit: int, pdu: bytes) -> tuple[Outcome, bytes | None]:
        """Decide one request: the fault outcome and the reply PDU (None: no reply)."""
        self.requests += 1
        meter = self.meters.get(unit)
        if meter is None:
            if unit == 0 and is_write(pdu):  # broadcast write: everyone, no reply
                now = self.clock.now()
                for m in self.meters.values():
                    answer(self.layout, m, pdu, now)
                return NORMAL, None
            if self.framing == "tcp" and unit != 0:
                return NORMAL, exception_pdu(pdu[0] if pdu else 0, GATEWAY_TARGET_FAILED)
            return NORMAL, None
        now = self.clock.now()
        outcome = self.faults.decide(self.offset + unit, now, is_write=is_write(pdu))
        if outcome is NORMAL:
            return outcome, answer(self.layout, meter, pdu, now)
        if outcome.energy_reset:
            meter.model.replace_energy_register(now)
        if outcome.vanished and self.framing == "tcp":
            return outcome, exception_pdu(pdu[0] if pdu else 0, GATEWAY_TARGET_FAILED)
        if outcome.silent or outcome.reset:
            return outcome, None
        if outcome.exception is not None:
            return outcome, exception_pdu(pdu[0] if pdu else 0, outcome.exception)
        return outcome, answer(self.layout, meter, pdu, now, outcome.relay_actuates)


class Session:
    """One client connection (or the pty) on an endpoint."""

    def __init__(
        self,
        endpoint: Endpoint,
        write: Callable[[bytes], None],
        abort: Callable[[], None],
        *,
        counted: bool = False,
    ) -> None:
        self.endpoint = endpoint
        self._write = write
        self._abort = abort
        self._counted = counted  # holds one of the endpoint's connections
        self._tcp = endpoint.framing == "tcp"
        self._mbap = MbapReader()
        self._rtu = RtuReader()
        self._last_rx = 0.0
        self._replies = ReplyQueue(endpoint.name, write, self.close, self._drained)
        #: MBAP requests received and not yet answered (one at a time, unless pipelining)
        self._backlog: collections.deque[tuple[int, int, bytes]] = collections.deque()
        self._next: asyncio.Handle | None = None
        self._closed = False
        self._stale = RTU_STALE_PARTIAL
        if endpoint.baud is not None:
            self._stale = max(RTU_STALE_PARTIAL, 3.5 * rtu_char_time(endpoint.baud))

    def feed(self, data: bytes) -> None:
        if self._closed:
            return
        if self._tcp:
            try:
                frames = self._mbap.feed(data)
            except DecodeError as exc:
                log.warning("%s: closing connection: %s", self.endpoint.name, exc)
                self.close()
                return
            if not self.endpoint.pipelining:
                self._backlog.extend(frames)
                if self._next is None:
                    self._serve_next()
                return
            out: list[bytes] = []
            for tid, unit, pdu in frames:
                outcome, reply = self.endpoint.respond(unit, pdu)
                if outcome is NORMAL and not self._replies.waiting:
                    if reply is not None:
                        out.append(mbap_frame(tid, unit, reply))
                    continue
                if out:
                    self._write(b"".join(out))
                    out = []
                framed = None if reply is None else mbap_frame(tid, unit, reply)
                self._schedule(outcome, framed, time.monotonic() + outcome.delay)
            if out:
                self._write(b"".join(out))
            return
        mono = time.monotonic()
        if mono - self._last_rx > self._stale:
            self._rtu.reset()
        self._last_rx = mono
        for frame in self._rtu.feed(data):
            unit, pdu = frame[0], frame[1:]
            outcome, reply = self.endpoint.respond(unit, pdu)
            framed = None if reply is None else rtu_frame(unit, reply)
            done, busy = self.endpoint.wire_time(len(frame) + 2, len(framed or b""))
            # One exchange at a time on the wire; a slow meter holds the bus while it thinks.
            # Timed from the request's arrival, not from now: answering takes a while here,
            # and a real line would not wait for it.
            start = max(mono, self.endpoint.busy_until) + outcome.delay
            self.endpoint.busy_until = start + busy
            self._schedule(outcome, framed, start + done)

    def _serve_next(self) -> None:
        """Answer the oldest waiting MBAP request, unless a reply is still to be written;
        the next one gets its turn on a later loop iteration (other connections first)."""
        self._next = None
        if self._closed or self._replies.waiting or not self._backlog:
            return
        tid, unit, pdu = self._backlog.popleft()
        outcome, reply = self.endpoint.respond(unit, pdu)
        framed = None if reply is None else mbap_frame(tid, unit, reply)
        if outcome is NORMAL and framed is not None:
            self._write(framed)
        else:
            self._schedule(outcome, framed, time.monotonic() + outcome.delay)
        if self._backlog and not self._replies.waiting:
            self._next = asyncio.get_running_loop().call_soon(self._serve_next)

    def _schedule(self, outcome: Outcome, frame: bytes | None, due: float) -> None:
        """Queue a reply (or a reset) to go out at ``due`` (monotonic), behind earlier
        replies."""
        if outcome.reset:
            if self._tcp:  # a serial line has no connection to reset: the reply is lost
                self._replies.push_reset()
            return
        if frame is None:
            return
        if outcome.corruption is not None:
            frame = corrupt(frame, outcome.corruption, 7 if self._tcp else 0, self.endpoint.rng)
        self._replies.push(due, frame)

    def _drained(self) -> None:
        """Every queued reply is written: the next waiting request's turn."""
        if self._backlog and self._next is None and not self._closed:
            self._serve_next()

    def close(self) -> None:
        """Drop the connection at once (TCP: with an RST)."""
        self._closed = True
        self._replies.stop()
        self._backlog.clear()
        self._abort()
        self._stop_next()

    def _stop_next(self) -> None:
        if self._next is not None:
            self._next.cancel()
            self._next = None

    async def wait_closed(self) -> None:
        """Wait for a cancelled reply writer to finish (no task left behind)."""
        await self._replies.wait_closed()

    def connection_lost(self) -> None:
        if self._counted:
            self.endpoint.connections -= 1
            self._counted = False
        self._closed = True
        self._replies.stop()
        self._backlog.clear()
        self._stop_next()


def _accept(endpoint: Endpoint, transport: asyncio.Transport) -> Session | None:
    """A TCP connection's session, or None: over the limit, reset at once."""
    abort = reset_abort(transport)
    limit = endpoint.max_connections
    if limit is not None and endpoint.connections >= limit:
        # A device at its connection limit: accepted by the kernel, reset at once.
        endpoint.refused += 1
        log.info("%s: connection %d over the limit of %d: reset", endpoint.name,
                 endpoint.connections + 1, limit)  # fmt: skip
        abort()
        return None
    endpoint.connections += 1
    return Session(endpoint, transport.write, abort, counted=True)


async def serve_tcp(
    endpoint: Endpoint, host: str, port: int, sessions: set[Session]
) -> asyncio.Server:
    """Listen for Modbus TCP (or RTU-over-TCP) clients on ``host:port``."""
    return await transport.serve_tcp(lambda tr: _accept(endpoint, tr), host, port, sessions)


class PtyBus(PtyLine[Session]):
    """RTU over a pseudo-terminal pair: the gateway opens :attr:`path` with pyserial."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        super().__init__(lambda write, abort: Session(endpoint, write, abort))
