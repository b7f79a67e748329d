"""Whole register images of a map, point by point: the plain reference the tests check the
simulator's registers, the gateway's block decoder and third-party maps against (the
gateway itself decodes with protocol.codec.BlockDecoder, planned once per read)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from protocol.codec import Value, decode, encode
from protocol.regmap import RegisterMap, Table


def decode_block(
    regmap: RegisterMap, table: Table, start: int, regs: Sequence[int]
) -> dict[str, Value]:
    """Decode every point of ``table`` that lies wholly inside ``regs`` read from ``start``."""
    out: dict[str, Value] = {}
    for p in regmap.points_in(table):
        if p.address >= start and p.end <= start + len(regs):
            out[p.name] = decode(p, regs[p.address - start : p.end - start])
    return out


def encode_block(
    regmap: RegisterMap, table: Table, values: Mapping[str, Value]
) -> tuple[int, list[int]]:
    """Encode named values into one contiguous image of ``table``: (start, registers).

    Points without a value are zero; the image spans every point of the table.
    """
    start, count = regmap.span(table)
    image = [0] * count
    for p in regmap.points_in(table):
        if p.name in values:
            image[p.address - start : p.end - start] = encode(p, values[p.name])
    return start, image
