"""What a Modbus master session tells the shell around it (aioquic's shape: the session
takes bytes and the time, and returns events).

Every request a session accepts ends in exactly one :class:`ReplyReceived` or
:class:`RequestFailed` naming it by its handle, unless the shell abandons it first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from protocol.errors import DecodeError, IOFailure, ProtocolError
from protocol.modbus.pdu import ExceptionReplyError, Request


@dataclass(frozen=True, slots=True)
class ReplyReceived:
    """The reply to request ``handle``: registers, bits as 0/1, or ``()`` for a write."""

    handle: int
    request: Request
    values: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RequestFailed:
    """Request ``handle`` failed; nothing from it is to be used. ``error`` is the codec's
    exception when a whole reply was refused (an :class:`ExceptionReplyError` carries the
    device's exception code)."""

    handle: int
    request: Request
    failure: IOFailure
    cause: str
    error: ProtocolError | None = None


@dataclass(frozen=True, slots=True)
class StreamOutOfStep:
    """TCP: the byte stream can no longer be trusted to be in step; close the connection.
    Every request in flight on it has already failed (the events before this one)."""

    reason: str


Event = ReplyReceived | RequestFailed | StreamOutOfStep


class SessionUsageError(ProtocolError):
    """The shell used a session out of turn (our fault, never the peer's)."""


def outcome(
    handle: int,
    request: Request,
    frame: bytes,
    parse: Callable[[Request, bytes], tuple[int, ...]],
) -> ReplyReceived | RequestFailed:
    """The event for a whole frame answering ``request``: its values, or why not."""
    try:
        return ReplyReceived(handle, request, parse(request, frame))
    except ExceptionReplyError as exc:
        return RequestFailed(handle, request, IOFailure.EXCEPTION, str(exc), exc)
    except DecodeError as exc:
        return RequestFailed(handle, request, IOFailure.GARBLED, str(exc), exc)
