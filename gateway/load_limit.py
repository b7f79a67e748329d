"""A set-maximum-power token carried out on the meter: its load limit written, then read
back, and what was read told to the core (``LoadLimitObserved``), so the headend learns
whether the meter holds the limit it was sent. The largest limit a meter's register can
hold is derived here too, so the token intake refuses one it could not write."""

from __future__ import annotations

import math
from datetime import datetime
from decimal import Decimal

from gateway.actuator import MeterTarget
from gateway.core.events import LoadLimitObserved
from gateway.meter_driver import PointNames
from gateway.modbus_port import MeterIOError
from protocol import modbus
from protocol.codec import decode, integer_range, physical
from protocol.errors import EncodeError, ProtocolError
from protocol.regmap import Point, RegisterMap, ValueType

#: The map point a load limit is written to (PE-1 holding register 4, W, 0 = none).
LOAD_LIMIT_POINT = "load_limit"
#: The largest whole number a float32 holds exactly (so a written limit reads back equal).
_F32_EXACT = 1 << 24


def largest_load_limit_w(regmap: PointNames) -> int | None:
    """The largest load limit, in whole watts, the meter's ``load_limit`` point holds
    (its type's largest raw value times its scale); None when the map has no such point
    or its type holds no number."""
    if not isinstance(regmap, RegisterMap) or not regmap.has(LOAD_LIMIT_POINT):
        return None
    point = regmap.point(LOAD_LIMIT_POINT)
    limits = integer_range(point)
    if point.type is ValueType.F32:
        limits = (-_F32_EXACT, _F32_EXACT)
    if limits is None or point.type is ValueType.BITS16:
        return None
    return math.floor(max(limits[0] * point.scale, limits[1] * point.scale))


def _raw(point: Point, watts: int) -> int | float:
    """The register value for ``watts`` (the point's scale applied)."""
    raw = Decimal(watts) / point.scale
    if point.type is ValueType.F32:
        return float(raw)
    if raw != raw.to_integral_value():
        raise EncodeError(f"{point.name}: {watts} W is not a whole number of {point.scale} W")
    return int(raw)


def _watts(point: Point, observed: object) -> int | None:
    if isinstance(observed, bool) or not isinstance(observed, int | float):
        return None
    watts = physical(point, observed)
    return int(watts) if watts == watts.to_integral_value() else None


async def write_load_limit(target: MeterTarget, watts: int, now: datetime) -> LoadLimitObserved:
    """Write ``watts`` to the meter's load limit and read it back. Every failure, the
    meter's or a value its register cannot take, comes back as ``error`` (the core
    reports it as a mismatch) rather than ending the task that awaits this."""
    regmap = target.io.regmap
    if not isinstance(regmap, RegisterMap) or not regmap.has(LOAD_LIMIT_POINT):
        # the token intake refused it: no load limit register
        return LoadLimitObserved(target.meter_id, watts, None, now, error="no load limit")
    point = regmap.point(LOAD_LIMIT_POINT)
    try:
        await target.io.write_points(
            target.port, target.unit, {LOAD_LIMIT_POINT: _raw(point, watts)}
        )
        regs = await target.port.request(
            modbus.read_holding(target.unit, point.address, point.count)
        )
        observed = decode(point, regs)
    except (MeterIOError, ProtocolError, ValueError) as exc:
        return LoadLimitObserved(target.meter_id, watts, None, now, error=str(exc)[:200])
    return LoadLimitObserved(target.meter_id, watts, _watts(point, observed), now)
