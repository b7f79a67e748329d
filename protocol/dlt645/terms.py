"""DL/T 645-2007's small vocabulary: data identifiers (written ``DI3 DI2 DI1 DI0``, sent
``DI0`` first), the error word of an error reply and the N1 codes of remote control."""

from __future__ import annotations

from enum import IntEnum, IntFlag

from protocol.errors import EncodeError

DI_SIZE = 4


class ErrorWord(IntFlag):
    """The error word of an error reply (one byte, bits)."""

    OTHER = 0x01
    NO_DATA = 0x02  # no such data (identifier unknown to the meter)
    PASSWORD = 0x04  # wrong password or not authorised
    BAUD_FIXED = 0x08
    YEAR_ZONES = 0x10
    DAY_SLOTS = 0x20
    TARIFFS = 0x40


class ControlCommand(IntEnum):
    """N1 of a remote-control (1CH) command."""

    TRIP = 0x1A
    ALLOW_CLOSE = 0x1B
    CLOSE = 0x1C
    ALARM = 0x2A
    ALARM_OFF = 0x2B
    PROTECT = 0x3A
    PROTECT_OFF = 0x3B


def di_text(di: int) -> str:
    return f"{di:08X}"


def parse_di(text: str) -> int:
    """``"00010000"`` (DI3 first) as the identifier."""
    if len(text) != 8:
        raise ValueError(f"data identifier {text!r} is not 8 hex digits")
    try:
        return int(text, 16)
    except ValueError:
        raise ValueError(f"data identifier {text!r} is not 8 hex digits") from None


def di_bytes(di: int) -> bytes:
    if not 0 <= di <= 0xFFFFFFFF:
        raise EncodeError(f"data identifier {di} is not 32-bit")
    return di.to_bytes(DI_SIZE, "little")
