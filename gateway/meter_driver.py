"""What the poller and the meter actions need of a meter's driver and relay, whatever the
protocol: :class:`~gateway.meter_io.MeterIO` is the Modbus one, the DL/T 645 bus runtime
(:mod:`gateway.dlt645_bus`) brings the other. Structural types, so neither depends on
the other."""

from __future__ import annotations

from typing import Protocol

from gateway.meter_io import MeterSnapshot
from gateway.modbus_port import ModbusPort
from protocol.codec import Value


class PointNames(Protocol):
    """A meter model, asked only whether it has a point of a given name."""

    def has(self, name: str) -> bool: ...


class MeterDriver(Protocol):
    """Reads (and register writes) of one meter model on its bus's port."""

    @property
    def regmap(self) -> PointNames: ...

    @property
    def status_reports_relay(self) -> bool: ...

    async def read(self, port: ModbusPort, unit: int) -> MeterSnapshot: ...

    async def write_points(self, port: ModbusPort, unit: int, values: dict[str, Value]) -> None: ...


class Relay(Protocol):
    """A meter's supply relay: commanded, then read back."""

    async def write(self, closed: bool) -> None: ...

    async def read(self) -> bool: ...
