"""DL/T 645-2007 frames: ``FE.. 68 A0..A5 68 C L DATA CS 16``, and a stream deframer.

- ``FE`` (0 to 4 of them) wakes the receiver; it is not part of the frame.
- ``A0..A5``: the address, 12 BCD digits, low byte first. ``99..99`` is the broadcast
  address (no reply), ``AA`` bytes are wildcards (read address on a point-to-point link).
- ``C``: D7 set in a reply, D6 set in an error reply, D5 set when follow-up frames hold
  more data, D4..D0 the function.
- ``L``: data length, at most 200; ``DATA`` bytes are sent with 33H added (mod 256).
- ``CS``: the sum mod 256 of every byte from the first 68H to the last data byte.

A :class:`Frame` holds the data as the application sees it (33H already taken off). Bytes
that are not a frame raise :class:`FrameError`, which carries them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from protocol.errors import DecodeError, EncodeError

START = 0x68
END = 0x16
WAKE_UP = 0xFE
#: Largest data field a frame may carry (the standard's bound for reads; writes use 50).
MAX_DATA = 200
#: Bytes of a frame around its data: 68, address, 68, C, L before; CS, 16 after.
OVERHEAD = 12
DATA_OFFSET = 0x33
#: Wake-up bytes a master sends before each frame.
PREAMBLE = 4

REPLY = 0x80
ERROR = 0x40
FOLLOWS = 0x20
FUNCTION_MASK = 0x1F


class Function(IntEnum):
    """D4..D0 of the control code."""

    BROADCAST_TIME = 0x08
    READ = 0x11
    READ_FOLLOW_UP = 0x12
    READ_ADDRESS = 0x13
    WRITE = 0x14
    WRITE_ADDRESS = 0x15
    FREEZE = 0x16
    CHANGE_BAUD = 0x17
    CHANGE_PASSWORD = 0x18
    CLEAR_DEMAND = 0x19
    CLEAR_METER = 0x1A
    CLEAR_EVENTS = 0x1B
    CONTROL = 0x1C


class FrameError(DecodeError):
    """Bytes that are not one valid frame (the peer's or the line's fault); carries them."""


@dataclass(frozen=True, slots=True)
class Address:
    """A meter's 6-byte address as on the wire (low byte first); shown as 12 digits."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 6:
            raise EncodeError(f"an address is 6 bytes, not {len(self.raw)}")

    @classmethod
    def parse(cls, text: str) -> Address:
        """12 digits, most significant first (``000000000001``); ``A`` digits are wildcards
        and must come in pairs."""
        text = text.strip().upper()
        if len(text) != 12 or any(c not in "0123456789A" for c in text):
            raise ValueError(f"address {text!r} is not 12 digits")
        pairs = [text[i : i + 2] for i in range(0, 12, 2)]
        if any("A" in p and p != "AA" for p in pairs):
            raise ValueError(f"address {text!r}: wildcard digits come as whole bytes (AA)")
        return cls(bytes(int(p, 16) for p in reversed(pairs)))

    @classmethod
    def of_number(cls, number: int) -> Address:
        """The address whose 12 digits spell ``number`` (0 .. 999999999999)."""
        if not 0 <= number <= 999_999_999_999:
            raise ValueError(f"{number} does not fit 12 digits")
        return cls.parse(f"{number:012d}")

    @property
    def digits(self) -> str:
        return self.raw[::-1].hex().upper()

    @property
    def is_bcd(self) -> bool:
        return all(b >> 4 <= 9 and b & 0x0F <= 9 for b in self.raw)

    @property
    def number(self) -> int:
        """The address as a number (a BCD address only)."""
        if not self.is_bcd:
            raise ValueError(f"address {self.digits} is not a meter's own address")
        return int(self.digits)

    def __str__(self) -> str:
        return self.digits


BROADCAST = Address(b"\x99" * 6)
WILDCARD = Address(b"\xaa" * 6)


def checksum(data: bytes | bytearray | memoryview) -> int:
    return sum(data) & 0xFF


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame: its address, control code and data (33H already removed)."""

    address: Address
    control: int
    data: bytes = b""

    def __post_init__(self) -> None:
        if not 0 <= self.control <= 0xFF:
            raise EncodeError(f"control code {self.control} is not a byte")
        if len(self.data) > MAX_DATA:
            raise EncodeError(f"{len(self.data)} data bytes: a frame holds at most {MAX_DATA}")

    @property
    def function(self) -> int:
        return self.control & FUNCTION_MASK

    @property
    def is_reply(self) -> bool:
        return bool(self.control & REPLY)

    @property
    def is_error(self) -> bool:
        return bool(self.control & ERROR)

    @property
    def follows(self) -> bool:
        """More data comes in follow-up frames (D5)."""
        return bool(self.control & FOLLOWS)

    def to_bytes(self, preamble: int = 0) -> bytes:
        """The frame on the wire, after ``preamble`` wake-up bytes (0..4)."""
        if not 0 <= preamble <= 4:
            raise EncodeError(f"preamble {preamble} outside 0..4")
        body = bytearray((START, *self.address.raw, START, self.control, len(self.data)))
        body += bytes((b + DATA_OFFSET) & 0xFF for b in self.data)
        body += bytes((checksum(body), END))
        return bytes((WAKE_UP,) * preamble) + bytes(body)

    @property
    def wire_size(self) -> int:
        """Bytes of the frame without preamble."""
        return OVERHEAD + len(self.data)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Frame:
        """Exactly one frame, optionally after wake-up bytes, and nothing else."""
        raw = bytes(raw)
        at = 0
        while at < len(raw) and raw[at] == WAKE_UP:
            at += 1
        frame, end = _frame_at(raw, at)
        if end != len(raw):
            raise FrameError(f"{len(raw) - end} bytes after the end of the frame", raw)
        return frame


def _frame_at(raw: bytes, at: int) -> tuple[Frame, int]:
    """The frame starting at ``raw[at]`` (its first 68H) and where it ends; FrameError if
    there is no complete valid frame there."""
    if len(raw) - at < OVERHEAD:
        raise FrameError(f"{len(raw) - at} bytes: shorter than any frame", raw)
    if raw[at] != START or raw[at + 7] != START:
        raise FrameError("no 68H ... 68H frame start", raw)
    length = raw[at + 9]
    if length > MAX_DATA:
        raise FrameError(f"data length {length} above {MAX_DATA}", raw)
    end = at + OVERHEAD + length
    if len(raw) < end:
        raise FrameError(f"frame of {OVERHEAD + length} bytes cut short", raw)
    if raw[end - 1] != END:
        raise FrameError(f"end byte {raw[end - 1]:02X}, expected 16", raw)
    if checksum(raw[at : end - 2]) != raw[end - 2]:
        raise FrameError(f"checksum {raw[end - 2]:02X} does not match the frame", raw)
    data = bytes((b - DATA_OFFSET) & 0xFF for b in raw[at + 10 : end - 2])
    return Frame(Address(raw[at + 1 : at + 7]), raw[at + 8], data), end


class Deframer:
    """Frames out of a byte stream, in whatever pieces it arrives (h11 style: no I/O).

    Wake-up bytes and anything that does not start a valid frame are skipped; a candidate
    whose length, checksum or end byte is wrong is given up one byte at a time, so a frame
    hidden behind noise is still found. :attr:`discarded` counts bytes skipped that were
    not wake-up bytes.
    """

    __slots__ = ("_buf", "_wake", "discarded")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._wake = 0  # wake-up bytes skipped since the last non-wake-up byte
        self.discarded = 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def missing(self) -> int | None:
        """Bytes still needed by the frame being received (until its length byte arrived, at
        least this many); None when none has begun."""
        buf = self._buf
        at = buf.find(START)
        if at < 0 or len(buf) - at < 10:
            return None if at < 0 else OVERHEAD - (len(buf) - at)
        return max(0, OVERHEAD + buf[at + 9] - (len(buf) - at))

    def reset(self) -> int:
        """Drop whatever was buffered (a silence or a failure ends it); returns how much."""
        n = len(self._buf)
        self.discarded += n - self._buf.count(WAKE_UP)
        self._buf.clear()
        self._wake = 0
        return n

    def feed(self, data: bytes) -> list[Frame]:
        """Append bytes; return every complete valid frame, in order."""
        return [frame for frame, _ in self.feed_sized(data)]

    def feed_sized(self, data: bytes) -> list[tuple[Frame, int]]:
        """As :meth:`feed`, with the bytes each frame took on the line (its wake-up bytes
        included): what its transmission cost."""
        buf = self._buf
        buf += data
        out: list[tuple[Frame, int]] = []
        while buf:
            at = buf.find(START)
            if at < 0:
                self._skip(len(buf))
                break
            if at:
                self._skip(at)
            state = _candidate(buf)
            if state is _WAIT:
                if _later_frame(buf):
                    self._skip(1)
                    continue
                break
            if state is _BAD:
                self._skip(1)
                continue
            assert isinstance(state, tuple)
            frame, end = state
            out.append((frame, end + self._wake))
            self._wake = 0
            del buf[:end]
        return out

    def _skip(self, n: int) -> None:
        skipped = self._buf[:n]
        wake = len(skipped) - len(skipped.rstrip(bytes((WAKE_UP,))))
        self._wake = self._wake + wake if wake == n else wake
        self.discarded += n - skipped.count(WAKE_UP)
        del self._buf[:n]


_WAIT = object()
_BAD = object()


def _candidate(buf: bytearray) -> object:
    """What the bytes from a 68H at ``buf[0]`` are: a frame (and its end), too few bytes
    yet (_WAIT) or not a frame (_BAD)."""
    n = len(buf)
    if n >= 8 and buf[7] != START:
        return _BAD
    if n < 10:
        return _WAIT
    length = buf[9]
    if length > MAX_DATA:
        return _BAD
    if n < OVERHEAD + length:
        return _WAIT
    try:
        return _frame_at(bytes(buf[: OVERHEAD + length]), 0)
    except FrameError:
        return _BAD


def _later_frame(buf: bytearray) -> bool:
    """Whether a whole valid frame starts after byte 0 (then byte 0 began no frame)."""
    at = buf.find(START, 1)
    while at > 0:
        state = _candidate(buf[at:])
        if isinstance(state, tuple):
            return True
        at = buf.find(START, at + 1)
    return False
