"""How talking to a meter fails, one typed exception whatever the protocol: timeouts,
exception replies, bad frames, lost connections and values no meter reports alike."""

from __future__ import annotations

import os

from gateway.errors import GatewayError
from protocol.errors import IOFailure
from protocol.modbus.events import RequestFailed

__all__ = ["BusUnreachableError", "IOFailure", "MeterIOError", "failed", "os_reason"]


class MeterIOError(GatewayError):
    """A request to one unit failed; ``kind`` says how, ``cause`` says what was seen."""

    def __init__(self, unit: int, kind: IOFailure, cause: str) -> None:
        self.unit = unit
        self.kind = kind
        self.cause = cause
        super().__init__(f"unit {unit}: {kind}: {cause}")


class BusUnreachableError(MeterIOError):
    """The bus itself cannot be opened (serial device) or connected (TCP endpoint, or
    ``socket://``): no meter on it can answer. ``reason`` says which and the OS's why."""

    def __init__(self, unit: int, reason: str) -> None:
        self.reason = reason
        super().__init__(unit, IOFailure.CONNECTION, reason)


def failed(event: RequestFailed) -> MeterIOError:
    """The error a caller gets for a master session's failure event; the codec's own
    exception, if any, is its ``__cause__`` (a refusal's Modbus exception code is there)."""
    error = MeterIOError(event.request.unit, event.failure, event.cause)
    error.__cause__ = event.error
    return error


def os_reason(exc: BaseException) -> str:
    """The operating system's words for ``exc`` ("Connection refused", "No such file or
    directory"), without Python's decoration."""
    errno = getattr(exc, "errno", None)
    if isinstance(errno, int) and errno > 0:
        return os.strerror(errno)
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
