"""Over real sockets the simulator behaves like field devices by default: one request at a time per connection (a pipelined request is answered only after the previous reply is written), at most 4 connections per endpoint (one more is reset); `pipelining=True` and `max_connections` change both."""

from __future__ import annotations

import asyncio
import contextlib
import struct

import pytest

from meter_sim.clock import VirtualClock
from meter_sim.server import DEFAULT_MAX_CONNECTIONS, Endpoint
from meter_sim.simulator import Simulator

pytestmark = pytest.mark.asyncio


def mbap(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def read_input(tid: int, unit: int, count: int = 2) -> bytes:
    return mbap(tid, unit, struct.pack(">BHH", 4, 0, count))


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readexactly(7), 5)
    (length,) = struct.unpack(">H", head[4:6])
    return head + await asyncio.wait_for(reader.readexactly(length - 1), 5)


async def exchange(address: tuple[str, int], unit: int) -> bytes:
    """One whole request and reply on a fresh connection."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(read_input(77, unit))
        return await read_reply(reader)
    finally:
        writer.close()
        await writer.wait_closed()


async def served_while_slow_reply_pending(pipelining: bool) -> tuple[int, list[int]]:
    """Pipeline [unit 1 (slow), unit 2, unit 3] on one connection; while unit 1's reply is
    held back, finish an exchange on another connection. How many requests the endpoint
    had answered by then, and the burst's replies' transaction ids in arrival order."""
    async with Simulator.start(meters=4, clock=VirtualClock(), pipelining=pipelining) as sim:
        sim.inject_fault(1, "slow", 1.0, delay=0.5)
        (endpoint,) = sim.endpoints
        reader, writer = await asyncio.open_connection(*sim.tcp_address)
        try:
            writer.write(read_input(1, 1) + read_input(2, 2) + read_input(3, 3))
            await writer.drain()
            reply = await exchange(sim.tcp_address, 4)  # the burst was read before this
            assert reply[:2] == struct.pack(">H", 77)
            answered = endpoint.requests - 1  # less this exchange's own request
            tids = [struct.unpack(">H", (await read_reply(reader))[:2])[0] for _ in range(3)]
        finally:
            writer.close()
            await writer.wait_closed()
    return answered, tids


async def test_by_default_a_pipelined_request_waits_for_the_previous_reply() -> None:
    answered, tids = await served_while_slow_reply_pending(pipelining=False)
    assert answered == 1  # units 2 and 3 wait behind the slow reply
    assert tids == [1, 2, 3]


async def test_pipelining_answers_the_whole_burst_at_once() -> None:
    answered, tids = await served_while_slow_reply_pending(pipelining=True)
    assert answered == 3
    assert tids == [1, 2, 3]  # still in request order


async def test_one_at_a_time_answers_a_long_burst_in_order() -> None:
    async with Simulator.start(meters=5, clock=VirtualClock(), seed=3) as sim:
        reader, writer = await asyncio.open_connection(*sim.tcp_address)
        try:
            writer.write(b"".join(read_input(tid, 1 + tid % 5, 1 + tid % 9) for tid in range(100)))
            for tid in range(100):
                reply = await read_reply(reader)
                assert struct.unpack(">HHHB", reply[:7]) == (
                    tid,
                    0,
                    3 + 2 * (1 + tid % 9),
                    1 + tid % 5,
                )
        finally:
            writer.close()
            await writer.wait_closed()


async def connections_closed_by_server(endpoint: Endpoint, open_now: int) -> None:
    """Yield to the loop until the simulator has seen clients' closes (no timed wait)."""
    for _ in range(1000):
        if endpoint.connections == open_now:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{endpoint.connections} connections still open")


async def test_a_connection_over_the_limit_is_reset_and_a_freed_place_is_taken() -> None:
    assert DEFAULT_MAX_CONNECTIONS == 4
    async with Simulator.start(meters=2, clock=VirtualClock()) as sim:
        (endpoint,) = sim.endpoints
        clients = [await asyncio.open_connection(*sim.tcp_address) for _ in range(4)]
        try:
            for reader, writer in clients:  # all four are served
                writer.write(read_input(5, 1))
                assert (await read_reply(reader))[:2] == struct.pack(">H", 5)
            reader, writer = await asyncio.open_connection(*sim.tcp_address)
            writer.write(read_input(6, 1))
            with pytest.raises((asyncio.IncompleteReadError, ConnectionResetError)):
                await read_reply(reader)
            writer.close()
            assert endpoint.refused == 1
            assert endpoint.connections == 4
            _, first = clients.pop(0)
            first.close()
            await first.wait_closed()
            await connections_closed_by_server(endpoint, 3)
            assert (await exchange(sim.tcp_address, 2))[:2] == struct.pack(">H", 77)
        finally:
            for _, writer in clients:
                writer.close()
                await writer.wait_closed()


async def test_the_limit_is_configurable_and_can_be_lifted() -> None:
    async with Simulator.start(meters=1, clock=VirtualClock(), max_connections=1) as sim:
        reader, writer = await asyncio.open_connection(*sim.tcp_address)
        try:
            with pytest.raises((asyncio.IncompleteReadError, ConnectionResetError)):
                await exchange(sim.tcp_address, 1)
            writer.write(read_input(9, 1))
            assert (await read_reply(reader))[:2] == struct.pack(">H", 9)
        finally:
            writer.close()
            await writer.wait_closed()
    async with Simulator.start(meters=1, clock=VirtualClock(), max_connections=None) as sim:
        clients = [await asyncio.open_connection(*sim.tcp_address) for _ in range(10)]
        try:
            for k, (reader, writer) in enumerate(clients):
                writer.write(read_input(k, 1))
                assert (await read_reply(reader))[:2] == struct.pack(">H", k)
        finally:
            for _, writer in clients:
                writer.close()
                await writer.wait_closed()


async def test_the_limit_holds_for_rtu_over_tcp_too() -> None:
    async with Simulator.start(
        meters=1, clock=VirtualClock(), tcp_port=None, rtu_tcp_port=0, max_connections=2
    ) as sim:
        assert sim.rtu_tcp_address is not None
        clients = [await asyncio.open_connection(*sim.rtu_tcp_address) for _ in range(3)]
        try:
            reader, _ = clients[2]
            # reset (or, should the reset race the read, at least closed): no data
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(100), 5) == b""
            (endpoint,) = sim.endpoints
            assert endpoint.refused == 1
            assert endpoint.connections == 2
        finally:
            for _, writer in clients:
                writer.close()
                with contextlib.suppress(ConnectionResetError):
                    await writer.wait_closed()
