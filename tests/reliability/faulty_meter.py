"""A Modbus TCP server of the tests' own (not the simulator) for meters that misbehave:
values no meter should report, a relay whose status bit lies, and replies that are
truncated, split, concatenated or sent for another unit. Frames are built here with
``struct`` from the Modbus spec, independently of the gateway's codec.

Each unit has its register tables (a dict address -> 16-bit value per table) that the
test sets, and a ``fault`` that shapes its next replies.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum


class Fault(StrEnum):
    NONE = "none"
    #: the first half of the reply now; the rest of the stream goes on with the next one
    TRUNCATE = "truncate"
    #: the reply in two writes, 20 ms apart (TCP may deliver it in two parts: still good)
    SPLIT = "split"
    #: the reply held back and sent in one write with the next reply
    CONCAT = "concat"
    #: the reply names another unit id
    OTHER_UNIT = "other_unit"
    #: the reply carries one register fewer than asked (a consistent but short frame)
    SHORT = "short"
    #: no reply at all (the meter is gone, or its bus is cut)
    SILENT = "silent"


@dataclass
class Unit:
    input: dict[int, int] = field(default_factory=dict)
    holding: dict[int, int] = field(default_factory=dict)
    coils: dict[int, int] = field(default_factory=dict)
    fault: Fault = Fault.NONE
    #: the status register's relay bit is forced to this, whatever the coil says
    status_relay_lies: bool | None = None
    status_address: int | None = None
    writes: list[tuple[int, int, list[int]]] = field(default_factory=list)


def words_u64(value: int) -> list[int]:
    return [(value >> s) & 0xFFFF for s in (48, 32, 16, 0)]


def words_u32(value: int) -> list[int]:
    return [(value >> 16) & 0xFFFF, value & 0xFFFF]


def words_f32(value: float) -> list[int]:
    raw = struct.pack(">f", value)
    return [int.from_bytes(raw[0:2], "big"), int.from_bytes(raw[2:4], "big")]


def put(table: dict[int, int], address: int, words: list[int]) -> None:
    for i, w in enumerate(words):
        table[address + i] = w


class FaultyMeterServer:
    """``async with FaultyMeterServer() as server``; meters at ``server.units[n]``."""

    def __init__(self) -> None:
        self.units: dict[int, Unit] = {}
        self.counts: Counter[str] = Counter()
        self._server: asyncio.Server | None = None
        self._held: dict[asyncio.StreamWriter, bytes] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> FaultyMeterServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
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

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                header = await reader.readexactly(7)
                tid, _proto, length, unit = struct.unpack(">HHHB", header)
                pdu = await reader.readexactly(length - 1)
                await self._answer(writer, tid, unit, pdu)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    def _reply_pdu(self, unit: Unit, pdu: bytes) -> bytes:
        fn = pdu[0]
        if fn in (3, 4):
            start, count = struct.unpack(">HH", pdu[1:5])
            table = unit.holding if fn == 3 else unit.input
            words = [table.get(start + i, 0) for i in range(count)]
            if fn == 4 and unit.status_relay_lies is not None and unit.status_address is not None:
                off = unit.status_address - start
                if 0 <= off < count:
                    bit = int(unit.status_relay_lies)
                    words[off] = (words[off] & ~1) | bit
            if unit.fault is Fault.SHORT:
                words = words[:-1]
            return struct.pack(f">BB{len(words)}H", fn, 2 * len(words), *words)
        if fn == 1:
            start, count = struct.unpack(">HH", pdu[1:5])
            bits = [unit.coils.get(start + i, 0) for i in range(count)]
            packed = bytearray((count + 7) // 8)
            for i, b in enumerate(bits):
                packed[i // 8] |= (b & 1) << (i % 8)
            return bytes([fn, len(packed)]) + bytes(packed)
        if fn == 5:
            address, value = struct.unpack(">HH", pdu[1:5])
            unit.coils[address] = 1 if value == 0xFF00 else 0
            unit.writes.append((fn, address, [value]))
            return pdu[:5]
        if fn == 16:
            address, count, _n = struct.unpack(">HHB", pdu[1:6])
            values = list(struct.unpack(f">{count}H", pdu[6 : 6 + 2 * count]))
            put(unit.holding, address, values)
            unit.writes.append((fn, address, values))
            return pdu[:5]
        if fn == 6:
            address, value = struct.unpack(">HH", pdu[1:5])
            unit.holding[address] = value
            unit.writes.append((fn, address, [value]))
            return pdu[:5]
        return bytes([fn | 0x80, 1])

    async def _answer(
        self, writer: asyncio.StreamWriter, tid: int, unit_id: int, pdu: bytes
    ) -> None:
        unit = self.units.get(unit_id)
        if unit is None:
            reply = bytes([pdu[0] | 0x80, 0x0B])
            fault = Fault.NONE
        else:
            reply = self._reply_pdu(unit, pdu)
            fault = unit.fault
        if fault is Fault.SILENT:
            self.counts[str(fault)] += 1
            return
        named = unit_id + 1 if fault is Fault.OTHER_UNIT else unit_id
        frame = struct.pack(">HHHB", tid, 0, len(reply) + 1, named) + reply
        self.counts[str(fault)] += 1
        held = self._held.pop(writer, b"")
        if fault is Fault.CONCAT:
            self._held[writer] = held + frame
            return
        frame = held + frame
        if fault is Fault.TRUNCATE:
            writer.write(frame[: len(frame) // 2])
        elif fault is Fault.SPLIT:
            half = len(frame) // 2
            writer.write(frame[:half])
            await writer.drain()
            await asyncio.sleep(0.02)
            writer.write(frame[half:])
        else:
            writer.write(frame)
        await writer.drain()
