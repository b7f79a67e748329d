"""Our Modbus ports against a server we did not write (pymodbus 3.16, Modbus TCP and RTU framing over TCP): PE-1 readings decode to the values served, relay and register writes land and read back, concurrent callers get their own replies, exception replies are typed failures, and a server that garbles pipelined requests gets failures, never a value for the wrong request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer

from gateway.actuator import RelayTarget
from gateway.meter_io import MeterIO
from gateway.modbus_port import IOFailure, MeterIOError, ModbusPort, RtuPort, TcpPort
from protocol.codec import Value
from protocol.modbus import ExceptionCode, ExceptionReplyError, read_holding, read_input
from protocol.regmap import Table, load_map
from tests.support.register_images import encode_block

pytestmark = pytest.mark.asyncio

PE1 = MeterIO(load_map("pe1"))
UNITS = (1, 2, 3)


def reading(unit: int) -> dict[str, Value]:
    return {
        "map_version": 1,
        "energy_import": 1_000_000 * unit + 17,
        "voltage": 2300 + unit,
        "active_power": -150 * unit,
        "status": 0b1001,
        "keypad_seq": unit,
        "keypad_digits": f"{unit:020d}",
    }


def device(unit: int) -> ModbusDeviceContext:
    start, image = encode_block(PE1.regmap, Table.INPUT, reading(unit))
    assert start == 0
    # pymodbus's blocks count from 1: block address 1 is protocol address 0.
    return ModbusDeviceContext(
        ir=ModbusSequentialDataBlock(1, image),  # type: ignore[no-untyped-call]
        hr=ModbusSequentialDataBlock(1, [0] * 8),  # type: ignore[no-untyped-call]
        co=ModbusSequentialDataBlock(1, [1]),  # type: ignore[no-untyped-call]
    )


async def pymodbus_server(framer: FramerType) -> ModbusTcpServer:
    """A pymodbus server with :data:`UNITS` on a free loopback port, serving."""
    context = ModbusServerContext(devices={u: device(u) for u in UNITS}, single=False)
    server = ModbusTcpServer(context, address=("127.0.0.1", 0), framer=framer)
    await server.serve_forever(background=True)
    return server


def address(server: ModbusTcpServer) -> tuple[str, int]:
    host, number = server.transport.sockets[0].getsockname()[:2]  # type: ignore[attr-defined]
    return host, number


@pytest_asyncio.fixture(params=["tcp", "rtu"])
async def port(request: pytest.FixtureRequest) -> AsyncIterator[ModbusPort]:
    """One of our ports, connected to a fresh pymodbus server on a free loopback port."""
    framing = request.param
    server = await pymodbus_server(FramerType.SOCKET if framing == "tcp" else FramerType.RTU)
    host, number = address(server)
    ours: TcpPort | RtuPort
    if framing == "tcp":  # one request in flight: the pymodbus server takes no pipelining
        ours = TcpPort("tcp-1", host, number, concurrency=1, timeout=0.5)
    else:
        ours = RtuPort("rtu-1", f"socket://{host}:{number}", baud=115200, timeout=0.3)
    try:
        yield ours
    finally:
        await ours.close()
        await server.shutdown()  # type: ignore[no-untyped-call]


async def test_readings_decode_to_the_values_served(port: ModbusPort) -> None:
    for unit in UNITS:
        snap = await PE1.read(port, unit)
        served = reading(unit)
        assert snap.energy_import_wh == served["energy_import"]
        assert snap.power_w == served["active_power"]
        assert snap.voltage_v == pytest.approx(230.0 + unit / 10)
        assert snap.relay_closed is True
        assert snap.flags == {"relay_closed", "keypad_pending"}
        assert (snap.keypad_seq, snap.keypad_digits) == (unit, served["keypad_digits"])


async def test_writes_land_and_read_back(port: ModbusPort) -> None:
    coil = PE1.regmap.point("relay").address
    await RelayTarget(port, 2, coil).write(False)
    assert await RelayTarget(port, 2, coil).read() is False
    assert await RelayTarget(port, 1, coil).read() is True  # another unit's relay is its own
    await PE1.write_points(port, 2, {"display_code": 7, "display_credit": -1250})
    assert await port.request(read_holding(2, 1, 3)) == (7, 0xFFFF, 0xFB1E)
    await PE1.write_points(port, 2, {"keypad_ack": 9})  # one register: function 6
    assert await port.request(read_holding(2, 0, 1)) == (9,)


async def test_concurrent_callers_each_get_their_own_reply(port: ModbusPort) -> None:
    snaps = await asyncio.gather(*(PE1.read(port, u) for u in UNITS for _ in range(4)))
    assert [s.energy_import_wh for s in snaps] == [
        reading(u)["energy_import"] for u in UNITS for _ in range(4)
    ]


async def test_exception_replies_are_typed_failures(port: ModbusPort) -> None:
    with pytest.raises(MeterIOError) as refused:
        await port.request(read_input(1, 500, 2))  # beyond the served block
    assert refused.value.kind is IOFailure.EXCEPTION
    assert "illegal data address" in refused.value.cause
    code = refused.value.__cause__  # the device's code, as a scan tells silence by it
    assert isinstance(code, ExceptionReplyError)
    assert code.code == ExceptionCode.ILLEGAL_DATA_ADDRESS
    with pytest.raises(MeterIOError) as absent:  # pymodbus answers for a unit it lacks
        await port.request(read_input(9, 0, 1))
    assert absent.value.kind is IOFailure.EXCEPTION
    assert "server device failure" in absent.value.cause
    assert (await PE1.read(port, 3)).energy_import_wh == reading(3)["energy_import"]


async def test_a_server_that_garbles_pipelined_requests_never_gets_a_value_misplaced() -> None:
    """pymodbus 3.16 answers a burst of pipelined requests wrongly (the last one twice,
    under the first one's transaction id too): each of our requests gets its own values
    or a typed failure, and the port reads on after it."""
    server = await pymodbus_server(FramerType.SOCKET)
    pipelined = TcpPort("tcp-1", *address(server), concurrency=4, timeout=0.5)
    try:
        units = [u for u in UNITS for _ in range(4)]
        results = await asyncio.gather(
            *(PE1.read(pipelined, u) for u in units), return_exceptions=True
        )
        for unit, result in zip(units, results, strict=True):
            if isinstance(result, MeterIOError):
                assert result.unit == unit
            else:
                assert not isinstance(result, BaseException), result
                assert result.energy_import_wh == reading(unit)["energy_import"]
        # pymodbus 3.16 does garble them (if a release mends that, this line may go)
        assert any(isinstance(r, MeterIOError) for r in results)
        alone = await PE1.read(pipelined, 2)
        assert alone.energy_import_wh == reading(2)["energy_import"]
    finally:
        await pipelined.close()
        await server.shutdown()  # type: ignore[no-untyped-call]
