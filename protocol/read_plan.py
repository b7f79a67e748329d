"""Which Modbus reads fetch a set of points: as few requests as the 125-register limit
and the gaps between points allow. Pure, so the plan for each map can be printed."""

from __future__ import annotations

from dataclasses import dataclass

from protocol.regmap import Point, RegisterMap, Table

MAX_REGISTERS = 125
MAX_BITS = 2000


@dataclass(frozen=True, slots=True)
class BlockRead:
    table: Table
    start: int
    count: int
    points: tuple[Point, ...]


def plan_reads(
    regmap: RegisterMap, names: list[str] | tuple[str, ...], *, max_gap: int = 16
) -> list[BlockRead]:
    """Group the named points into block reads per table, merging neighbours closer than
    ``max_gap`` registers, never exceeding the request size limit."""
    points = [regmap.point(n) for n in names]
    plan: list[BlockRead] = []
    for table in Table:
        pts = sorted((p for p in points if p.table is table), key=lambda p: p.address)
        limit = MAX_BITS if table.is_bit_table else MAX_REGISTERS
        group: list[Point] = []
        for p in pts:
            if group:
                start = group[0].address
                end = max(q.end for q in group)
                if p.address - end <= max_gap and max(end, p.end) - start <= limit:
                    group.append(p)
                    continue
                plan.append(BlockRead(table, start, end - start, tuple(group)))
            group = [p]
        if group:
            start = group[0].address
            plan.append(BlockRead(table, start, max(q.end for q in group) - start, tuple(group)))
    return plan
