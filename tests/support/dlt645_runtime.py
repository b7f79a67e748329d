"""A DL/T 645 bus runtime on a simulator's RTU-over-TCP endpoint, for the tests that drive
one bus directly (measured reads, time sync) without a whole gateway."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from gateway.config import RtuBus
from gateway.dlt645_bus import Dlt645BusRuntime
from gateway.runtime import CoreItem
from meter_sim.dlt645_simulator import Dlt645Simulator


async def _no_notice(item: CoreItem) -> None:
    raise AssertionError(f"no notice expected: {item}")


def bus_runtime(
    sim: Dlt645Simulator,
    *,
    timeout_s: float = 0.15,
    enqueue: Callable[[CoreItem], Awaitable[None]] = _no_notice,
    **dlt645: object,
) -> Dlt645BusRuntime:
    """Bus ``dlt-1`` (9,600 8E1) on ``sim``, its ``dlt645`` settings from ``dlt645``."""
    assert sim.rtu_tcp_address is not None
    bus = RtuBus.model_validate(
        {
            "name": "dlt-1",
            "kind": "rtu",
            "protocol": "dlt645",
            "device": "socket://{}:{}".format(*sim.rtu_tcp_address),
            "baud": 9600,
            "parity": "E",
            "timeout_s": timeout_s,
            "dlt645": dlt645,
        }
    )
    return Dlt645BusRuntime(bus, lambda: datetime.now(UTC), enqueue)
