"""Shell-test fixtures: independent pymodbus clients for the simulator, closed after each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest_asyncio
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.framer import FramerType

TcpConnect = Callable[..., Awaitable[AsyncModbusTcpClient]]
SerialConnect = Callable[..., Awaitable[AsyncModbusSerialClient]]


@pytest_asyncio.fixture
async def modbus_tcp() -> AsyncIterator[TcpConnect]:
    """Connect a pymodbus TCP client: ``await modbus_tcp(address, framer=..., wait=...)``."""
    clients: list[AsyncModbusTcpClient] = []

    async def connect(
        address: tuple[str, int],
        *,
        framer: FramerType = FramerType.SOCKET,
        wait: float = 2.0,
        retries: int = 0,
    ) -> AsyncModbusTcpClient:
        client = AsyncModbusTcpClient(
            address[0],
            port=address[1],
            framer=framer,
            timeout=wait,
            retries=retries,
            reconnect_delay=0,
        )
        clients.append(client)
        assert await client.connect(), f"cannot connect to {address}"
        return client

    yield connect
    for client in clients:
        client.close()


@pytest_asyncio.fixture
async def modbus_serial() -> AsyncIterator[SerialConnect]:
    """Connect a pymodbus RTU client to a pty path: ``await modbus_serial(path, baudrate=...)``."""
    clients: list[AsyncModbusSerialClient] = []

    async def connect(
        path: str, *, baudrate: int = 9600, wait: float = 2.0, retries: int = 0
    ) -> AsyncModbusSerialClient:
        client = AsyncModbusSerialClient(
            path,
            framer=FramerType.RTU,
            baudrate=baudrate,
            timeout=wait,
            retries=retries,
            reconnect_delay=0,
        )
        clients.append(client)
        assert await client.connect(), f"cannot open {path}"
        return client

    yield connect
    for client in clients:
        client.close()
