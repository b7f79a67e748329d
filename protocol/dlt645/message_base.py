"""What every DL/T 645-2007 message shares (protocol/dlt645/messages.py defines them):
the round trip through a :class:`~protocol.dlt645.frame.Frame` and bytes, the checks of
a frame's control code and data identifier, and :class:`PayloadError`, raised with the
frame's bytes when its data does not fit the message it claims.
"""

from __future__ import annotations

from typing import Self

from protocol.dlt645.frame import FOLLOWS, PREAMBLE, REPLY, Frame, Function
from protocol.dlt645.terms import DI_SIZE
from protocol.errors import DecodeError


class PayloadError(DecodeError):
    """A valid frame whose data does not fit the message it claims (the peer's fault)."""


def di_of(frame: Frame, data: bytes) -> int:
    if len(data) < DI_SIZE:
        raise PayloadError("data shorter than a data identifier", frame.to_bytes())
    return int.from_bytes(data[:DI_SIZE], "little")


class MessageBase:
    """Shared ``to_bytes``/``from_bytes`` of the messages."""

    __slots__ = ()

    def to_frame(self) -> Frame:
        raise NotImplementedError

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        raise NotImplementedError

    def to_bytes(self, preamble: int = PREAMBLE) -> bytes:
        return self.to_frame().to_bytes(preamble)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Self:
        return cls.from_frame(Frame.from_bytes(raw))


def expect_control(frame: Frame, control: int, what: str) -> None:
    if frame.control != control:
        raise PayloadError(
            f"control code {frame.control:02X} is not a {what} ({control:02X})", frame.to_bytes()
        )


def expect_reply(frame: Frame, function: Function, what: str, *, follows: bool = False) -> None:
    """A normal reply to ``function``; with the follow-up bit only where ``follows``."""
    allowed = {REPLY | function} | ({REPLY | FOLLOWS | function} if follows else set())
    if frame.control not in allowed:
        raise PayloadError(f"control code {frame.control:02X} is not a {what}", frame.to_bytes())
