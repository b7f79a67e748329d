"""DL/T 645 data formats: packed BCD numbers (``XXXXXX.XX``), bit words, dates, times and
digit strings, every one transmitted low byte first.

A numeric format counts digits: ``XXX.X`` is four digits in two bytes, one of them a
decimal. Values are exchanged as *scaled integers* (``XXXXXX.XX`` 12345678 means
123456.78) so nothing here rounds. A signed quantity (current, power, power factor)
keeps its sign in the top bit of the last (most significant) byte, as the standard
says; its top digit is then 0..7.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from protocol.errors import DecodeError, EncodeError

_NUMBER = re.compile(r"^(X+)(?:\.(X+))?$")
_DIGITS = re.compile(r"^N+$")


def bcd_byte(value: int) -> int:
    """0..99 as one packed BCD byte."""
    if not 0 <= value <= 99:
        raise EncodeError(f"{value} does not fit one BCD byte")
    return (value // 10) << 4 | value % 10


def byte_value(byte: int, raw: bytes) -> int:
    """One packed BCD byte as 0..99; a nibble above 9 is a :class:`DecodeError`."""
    high, low = byte >> 4, byte & 0x0F
    if high > 9 or low > 9:
        raise DecodeError(f"byte {byte:02X} is not BCD", raw)
    return high * 10 + low


def bcd_digits(text: str) -> bytes:
    """A string of an even number of decimal digits (most significant first) as BCD bytes,
    low byte first."""
    if len(text) % 2 or not (text.isascii() and text.isdigit()):
        raise EncodeError(f"{text!r} is not an even number of decimal digits")
    return bytes(int(text[i : i + 2], 16) for i in range(len(text) - 2, -1, -2))


def digits_of(data: bytes) -> str:
    """BCD bytes (low byte first) as their digit string, most significant first."""
    for byte in data:
        byte_value(byte, data)
    return data[::-1].hex()


@dataclass(frozen=True, slots=True)
class NumberFormat:
    """``XXXXXX.XX``: ``digits`` BCD digits, ``decimals`` of them after the point."""

    digits: int
    decimals: int
    signed: bool = False

    @classmethod
    def parse(cls, text: str, *, signed: bool = False) -> NumberFormat:
        match = _NUMBER.match(text)
        if match is None:
            raise ValueError(f"{text!r} is not a number format like XXXXXX.XX")
        whole, frac = match.group(1), match.group(2) or ""
        digits = len(whole) + len(frac)
        if digits % 2:
            raise ValueError(f"{text!r} has an odd number of digits ({digits})")
        return cls(digits, len(frac), signed)

    @property
    def size(self) -> int:
        """Bytes on the wire."""
        return self.digits // 2

    @property
    def text(self) -> str:
        whole = "X" * (self.digits - self.decimals)
        return whole + ("." + "X" * self.decimals if self.decimals else "")

    @property
    def limit(self) -> int:
        """One past the largest magnitude (scaled)."""
        top = 8 if self.signed else 10
        return int(top * 10 ** (self.digits - 1))

    def decode(self, data: bytes) -> int:
        """The scaled integer (``123456.78`` as 12345678); negative when the sign bit is set."""
        if len(data) != self.size:
            raise DecodeError(f"{self.text}: expected {self.size} bytes, got {len(data)}", data)
        negative = False
        if self.signed and data[-1] & 0x80:
            negative = True
            data_bits = data[:-1] + bytes((data[-1] & 0x7F,))
        else:
            data_bits = data
        n = 0
        for byte in reversed(data_bits):
            n = n * 100 + byte_value(byte, data)
        return -n if negative else n

    def encode(self, scaled: int) -> bytes:
        """The bytes of a scaled integer; :class:`EncodeError` when it does not fit."""
        magnitude = abs(scaled)
        if scaled < 0 and not self.signed:
            raise EncodeError(f"{self.text}: {scaled} is negative and the format is unsigned")
        if magnitude >= self.limit:
            raise EncodeError(f"{self.text}: {scaled} does not fit")
        out = bytearray()
        for _ in range(self.size):
            magnitude, pair = divmod(magnitude, 100)
            out.append(bcd_byte(pair))
        if scaled < 0:
            out[-1] |= 0x80
        return bytes(out)

    def value(self, scaled: int) -> Decimal:
        """The scaled integer as the exact decimal it stands for."""
        return Decimal(scaled).scaleb(-self.decimals)


@dataclass(frozen=True, slots=True)
class DigitsFormat:
    """``NNNNNNNNNNNN``: a decimal digit string (meter numbers, addresses)."""

    digits: int

    @classmethod
    def parse(cls, text: str) -> DigitsFormat:
        if _DIGITS.match(text) is None or len(text) % 2:
            raise ValueError(f"{text!r} is not an even run of N")
        return cls(len(text))

    @property
    def size(self) -> int:
        return self.digits // 2

    @property
    def text(self) -> str:
        return "N" * self.digits

    def decode(self, data: bytes) -> str:
        if len(data) != self.size:
            raise DecodeError(f"{self.text}: expected {self.size} bytes, got {len(data)}", data)
        return digits_of(data)

    def encode(self, text: str) -> bytes:
        if len(text) != self.digits:
            raise EncodeError(f"{self.text}: {text!r} is not {self.digits} digits")
        return bcd_digits(text)


@dataclass(frozen=True, slots=True)
class BitsFormat:
    """A 16-bit status word (binary, not BCD), low byte first."""

    @property
    def size(self) -> int:
        return 2

    @property
    def text(self) -> str:
        return "bits16"

    def decode(self, data: bytes) -> int:
        if len(data) != 2:
            raise DecodeError(f"bits16: expected 2 bytes, got {len(data)}", data)
        return int.from_bytes(data, "little")

    def encode(self, word: int) -> bytes:
        if not 0 <= word <= 0xFFFF:
            raise EncodeError(f"bits16: {word} is not a 16-bit word")
        return word.to_bytes(2, "little")
