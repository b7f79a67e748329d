"""The protocol package's exceptions: one base, names that say whose fault it is."""

from __future__ import annotations

from collections.abc import Sequence


class ProtocolError(Exception):
    """Base of every error the protocol package raises."""


class DecodeError(ProtocolError):
    """Registers (or bytes) from a peer that cannot be decoded; carries the raw input."""

    def __init__(self, problem: str, raw: Sequence[int] | bytes) -> None:
        self.problem = problem
        self.raw: tuple[int, ...] | bytes = raw if isinstance(raw, bytes) else tuple(raw)
        super().__init__(f"{problem} (raw {self.raw!r})")


class EncodeError(ProtocolError):
    """A value that does not fit the register point it is written to (our fault)."""


class MapError(ProtocolError):
    """A register-map file that is malformed; names the file, the point and the problem."""

    def __init__(self, source: str, point: str | None, problem: str) -> None:
        self.source = source
        self.point = point
        self.problem = problem
        where = f"{source}: point {point!r}" if point else source
        super().__init__(f"{where}: {problem}")
