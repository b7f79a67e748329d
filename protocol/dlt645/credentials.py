"""What a DL/T 645 remote-control command carries to be obeyed: the password (``PA P0 P1
P2``, PA the level) and the operator code (``C0..C3``), both low byte first on the wire and
written as 8 hex digits."""

from __future__ import annotations

from dataclasses import dataclass

from protocol.errors import EncodeError


@dataclass(frozen=True, slots=True)
class Password:
    """``PA P0 P1 P2``: a level (00 highest .. 09) and three code bytes, written as 8 hex
    digits, level first then P2 P1 P0 (``02123456``: level 02, code 123456)."""

    level: int
    code: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.level <= 0xFF or len(self.code) != 3:
            raise EncodeError("a password is a level byte and three code bytes")

    @classmethod
    def parse(cls, text: str) -> Password:
        raw = _hex8(text, "password")
        return cls(raw[0], raw[1:][::-1])

    def to_bytes(self) -> bytes:
        return bytes((self.level,)) + self.code

    @classmethod
    def from_bytes(cls, data: bytes) -> Password:
        return cls(data[0], data[1:4])

    def __str__(self) -> str:
        return f"{self.level:02X}{self.code[::-1].hex().upper()}"

    def __repr__(self) -> str:
        return f"Password(level={self.level:02X}, code=***)"


@dataclass(frozen=True, slots=True)
class OperatorCode:
    """``C0..C3``, the operator who sends a command, written as 8 hex digits (C3 first)."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 4:
            raise EncodeError("an operator code is 4 bytes")

    @classmethod
    def parse(cls, text: str) -> OperatorCode:
        return cls(_hex8(text, "operator code")[::-1])

    def __str__(self) -> str:
        return self.raw[::-1].hex().upper()


def _hex8(text: str, what: str) -> bytes:
    if len(text) != 8:
        raise ValueError(f"{what} is 8 hex digits, not {text!r}")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{what} is 8 hex digits, not {text!r}") from None
