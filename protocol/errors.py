"""The protocol package's exceptions: one base, names that say whose fault it is."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum


class ProtocolError(Exception):
    """Base of every error the protocol package raises."""


class DecodeError(ProtocolError):
    """Registers (or bytes) from a peer that cannot be decoded; carries the raw input."""

    def __init__(self, problem: str, raw: Sequence[int] | bytes) -> None:
        self.problem = problem
        self.raw: tuple[int, ...] | bytes = raw if isinstance(raw, bytes) else tuple(raw)
        super().__init__(f"{problem} (raw {self.raw!r})")


class IOFailure(StrEnum):
    """How a request to a meter failed: the reason a master session and the gateway's
    ``MeterIOError`` carry, whatever the protocol on the wire."""

    TIMEOUT = "timeout"
    EXCEPTION = "exception"
    GARBLED = "garbled"
    CONNECTION = "connection"
    #: a whole frame whose values no real meter reports (not a number, out of range)
    INVALID_VALUE = "invalid_value"


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
