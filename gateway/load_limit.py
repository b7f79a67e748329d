"""A set-maximum-power token carried out on the meter: its load limit written, then read
back, and what was read told to the core (``LoadLimitObserved``), so the headend learns
whether the meter holds the limit it was sent."""

from __future__ import annotations

from datetime import datetime

from gateway.actuator import MeterTarget
from gateway.core.events import LoadLimitObserved
from gateway.modbus_port import MeterIOError
from protocol import modbus
from protocol.codec import decode
from protocol.regmap import RegisterMap

#: The map point a load limit is written to (PE-1 holding register 4, W, 0 = none).
LOAD_LIMIT_POINT = "load_limit"


async def write_load_limit(target: MeterTarget, watts: int, now: datetime) -> LoadLimitObserved:
    """Write ``watts`` to the meter's load limit and read it back."""
    regmap = target.io.regmap
    if not isinstance(regmap, RegisterMap):  # the token was refused before: not a Modbus map
        return LoadLimitObserved(target.meter_id, watts, None, now, error="no load limit")
    point = regmap.point(LOAD_LIMIT_POINT)
    try:
        await target.io.write_points(target.port, target.unit, {LOAD_LIMIT_POINT: watts})
        regs = await target.port.request(
            modbus.read_holding(target.unit, point.address, point.count)
        )
        observed = decode(point, regs)
    except (MeterIOError, ValueError) as exc:
        return LoadLimitObserved(target.meter_id, watts, None, now, error=str(exc)[:200])
    return LoadLimitObserved(
        target.meter_id, watts, observed if isinstance(observed, int) else None, now
    )
