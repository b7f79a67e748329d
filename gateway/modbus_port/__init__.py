"""The gateway's Modbus ports: Modbus TCP (:class:`TcpPort`) and Modbus RTU on a serial
device or ``socket://`` (:class:`RtuPort`).

Our own transports, thin asyncio shells around the pure master sessions of
:mod:`protocol.modbus` (which match replies, keep deadlines and the RTU silence rules;
tested without sockets), because the gateway must never attribute a value to the wrong
meter and no client library we know keeps these rules:

- TCP: up to a bound of requests in flight, spread over a few connections (meters and
  serial device servers answer one request at a time per connection), pipelined only
  beyond that, matched to replies by transaction id and unit id per connection; a
  timeout fails that request only (its late reply is dropped), so one dead unit behind a
  serial device server never closes the connection the healthy ones use. pymodbus's
  client keeps one request in flight per connection.
- RTU: one request on the wire at a time, after the 3.5-character silence; after any
  failure the bus stays silent for a guard time and stray bytes are discarded before
  the next request, so a late reply is never taken as the answer to the next one (RTU
  has no transaction id). pymodbus's RTU client keeps no silence of its own.

The codec is ours too, not pymodbus's (the figures are in :mod:`protocol.modbus`'s
opening comment and docs/overview.md). Every failure is one typed
:class:`MeterIOError` (timeouts, exception replies, bad frames, lost connections alike).
"""

from __future__ import annotations

from typing import Protocol

from gateway.modbus_port.errors import BusUnreachableError, IOFailure, MeterIOError, os_reason
from gateway.modbus_port.rtu import RtuPort
from gateway.modbus_port.tcp import TcpPort
from protocol.modbus.pdu import Request

__all__ = [
    "BusUnreachableError",
    "IOFailure",
    "MeterIOError",
    "ModbusPort",
    "RtuPort",
    "TcpPort",
    "os_reason",
]


class ModbusPort(Protocol):
    """What a poller needs from a bus."""

    name: str

    async def request(self, request: Request) -> tuple[int, ...]: ...

    async def close(self) -> None: ...
