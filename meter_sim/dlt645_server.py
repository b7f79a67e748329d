"""The asyncio shell of the DL/T 645 meters: one RS-485 bus on a pty or over TCP.

A :class:`Dlt645Bus` is the bus: its meters, its wire (one exchange at a time, 11 bits
a character, the meters' reply delay) and the faults in force, rolled per request with
the Modbus meters' :class:`~meter_sim.faults.FaultTable`. A :class:`Dlt645Session` is
one connection (or the pty): it finds frames in what arrives with the codec's
:class:`~protocol.dlt645.frame.Deframer`, asks the pure meters for replies and writes
them when they would have finished arriving on a real line, through the transports of
:mod:`meter_sim.transport` (shared with the Modbus endpoints).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from meter_sim import transport
from meter_sim.clock import Clock
from meter_sim.dlt645_meter import Dlt645Meter, answer, is_write, matches
from meter_sim.faults import NORMAL, FaultTable, Outcome, corrupt
from meter_sim.transport import PtyLine, ReplyQueue
from protocol.dlt645.frame import MAX_DATA, PREAMBLE, Deframer, Frame
from protocol.dlt645.messages import ErrorReply
from protocol.dlt645.meter_map import Dlt645Map
from protocol.dlt645.terms import ErrorWord

log = logging.getLogger(__name__)

#: Bits per character on the line: start, 8 data, even parity, stop (8E1).
BITS_PER_CHAR = 11
#: A partial request older than this is noise (the standard allows 500 ms between bytes).
STALE_PARTIAL = 0.5
#: The meters' reply delay Td with wire-time emulation (the standard's least, 20 ms).
REPLY_DELAY = 0.02


def char_time(baud: int) -> float:
    return BITS_PER_CHAR / baud


@dataclass(slots=True)
class Dlt645Bus:
    """One bus: its meters (by number), its wire and its faults."""

    name: str
    model_map: Dlt645Map
    meters: dict[int, Dlt645Meter]
    clock: Clock
    faults: FaultTable
    baud: int | None = None
    reply_delay: float = REPLY_DELAY
    reply_preamble: int = PREAMBLE
    max_data: int = MAX_DATA
    rng: random.Random = field(default_factory=random.Random)
    busy_until: float = 0.0  # monotonic time the wire is free again
    requests: int = 0

    def wire_time(self, request_len: int, reply_len: int) -> float:
        """Seconds from a request's first byte until its reply has fully arrived."""
        if self.baud is None:
            return 0.0
        char = char_time(self.baud)
        done = request_len * char
        if reply_len:
            done += self.reply_delay + reply_len * char
        return done

    def respond(self, frame: Frame) -> tuple[Outcome, bytes | None]:
        """Decide one request: the fault outcome and the reply bytes (None: silence)."""
        self.requests += 1
        now = self.clock.now()
        everyone = list(self.meters.values())
        if frame.is_reply or not any(matches(frame.address, m.address) for m in everyone):
            answer(self.model_map, everyone, frame, now)  # broadcasts; others: nothing
            return NORMAL, None
        numbers = {id(m): n for n, m in self.meters.items()}
        replies: list[bytes] = []
        outcome = NORMAL
        for meter in everyone:
            if not matches(frame.address, meter.address):
                continue
            decided = self.faults.decide(numbers[id(meter)], now, is_write=is_write(frame))
            if decided is not NORMAL:
                outcome = decided
            reply = self._reply(meter, frame, now, decided)
            if reply is not None:
                replies.append(reply)
        if not replies:
            return outcome, None
        if len(replies) > 1:  # several meters answered a wildcard: their replies collide
            return outcome, _collide(replies)
        return outcome, replies[0]

    def _reply(
        self, meter: Dlt645Meter, frame: Frame, now: float, outcome: Outcome
    ) -> bytes | None:
        if outcome.energy_reset:
            meter.model.replace_energy_register(now)
        if outcome.silent or outcome.reset:
            return None
        if outcome.exception is not None:
            error = ErrorWord(outcome.exception & 0xFF)
            reply = ErrorReply(meter.address, frame.function, error).to_frame()
        else:
            answered = answer(
                self.model_map,
                [meter],
                frame,
                now,
                relay_actuates=outcome.relay_actuates,
                max_data=self.max_data,
            )
            if not answered:
                return None
            reply = answered[0][1]
        raw = reply.to_bytes(self.reply_preamble)
        if outcome.corruption is not None:
            raw = corrupt(raw, outcome.corruption, 0, self.rng)
        return raw


def _collide(replies: list[bytes]) -> bytes:
    size = max(len(r) for r in replies)
    out = bytearray(size)
    for reply in replies:
        for i, b in enumerate(reply):
            out[i] |= b
    return bytes(out)


class Dlt645Session:
    """One client connection (or the pty) on a bus."""

    def __init__(
        self, bus: Dlt645Bus, write: Callable[[bytes], None], abort: Callable[[], None]
    ) -> None:
        self.bus = bus
        self._write = write
        self._abort = abort
        self._deframer = Deframer()
        self._last_rx = 0.0
        self._replies = ReplyQueue(bus.name, write, self.close)
        self._closed = False

    def feed(self, data: bytes) -> None:
        if self._closed:
            return
        mono = time.monotonic()
        if mono - self._last_rx > STALE_PARTIAL:
            self._deframer.reset()
        self._last_rx = mono
        for frame, size in self._deframer.feed_sized(data):
            outcome, reply = self.bus.respond(frame)
            done = self.bus.wire_time(size, len(reply or b""))
            # One exchange at a time on the bus; a slow meter holds it while it thinks.
            start = max(mono, self.bus.busy_until) + outcome.delay
            self.bus.busy_until = start + done
            if reply is not None:
                self._replies.push(start + done, reply)

    def close(self) -> None:
        self._closed = True
        self._replies.stop()
        self._abort()

    async def wait_closed(self) -> None:
        await self._replies.wait_closed()

    def connection_lost(self) -> None:
        self._closed = True
        self._replies.stop()


async def serve_tcp(
    bus: Dlt645Bus, host: str, port: int, sessions: set[Dlt645Session]
) -> asyncio.Server:
    """Listen for clients that speak the bus's bytes over TCP on ``host:port`` (a serial
    device server's TCP port)."""
    return await transport.serve_tcp(
        lambda tr: Dlt645Session(bus, tr.write, tr.abort), host, port, sessions
    )


class PtyBus(PtyLine[Dlt645Session]):
    """The bus on a pseudo-terminal pair: the gateway opens :attr:`path` with pyserial."""

    def __init__(self, bus: Dlt645Bus) -> None:
        self.bus = bus
        super().__init__(lambda write, abort: Dlt645Session(bus, write, abort))
