"""Modbus RTU framing, pure: unit id, PDU and CRC-16 (low byte first) on a serial line.

The master's side knows what it asked, so it knows a reply's length from its first two
bytes (:func:`rtu_reply_length`) and checks the whole frame against the request
(:func:`parse_rtu_reply`). The server's side (:class:`RtuReader`) finds requests in a byte
stream by their function's length and their CRC, as a slave does after noise.
"""

from __future__ import annotations

from protocol.errors import DecodeError
from protocol.modbus.pdu import Request, parse_reply_pdu

#: The longest RTU frame: address, 253-byte PDU, CRC.
MAX_RTU_FRAME = 256


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes | bytearray) -> int:
    """Modbus RTU CRC-16 (polynomial 0xA001 reflected, initial 0xFFFF)."""
    crc = 0xFFFF
    table = _CRC_TABLE
    for b in data:
        crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
    return crc


def rtu_frame(unit: int, pdu: bytes) -> bytes:
    body = bytes((unit,)) + pdu
    return body + crc16(body).to_bytes(2, "little")


def rtu_char_time(baud: int) -> float:
    """Seconds per character on the wire: 11 bits (start, 8 data, parity or 2nd stop, stop)."""
    return 11.0 / baud


def rtu_silence(baud: int) -> float:
    """The 3.5-character inter-frame silence; fixed at 1.75 ms above 19200 baud."""
    return 1.75e-3 if baud > 19200 else 3.5 * rtu_char_time(baud)


# ------------------------------------------------------------------ the master's side


def rtu_reply_length(request: Request, head: bytes) -> int:
    """Total RTU reply length once its first two bytes (unit, function) are known."""
    if len(head) < 2:
        raise ValueError("need the first two bytes")
    if head[1] & 0x80:
        return 5
    return 1 + request.reply_pdu_length() + 2


def parse_rtu_reply(request: Request, frame: bytes) -> tuple[int, ...]:
    """Check an RTU reply frame (address, CRC) and parse its PDU."""
    if len(frame) < 5:
        raise DecodeError("RTU frame shorter than 5 bytes", frame)
    if crc16(frame[:-2]) != int.from_bytes(frame[-2:], "little"):
        raise DecodeError("RTU CRC mismatch", frame)
    if frame[0] != request.unit:
        raise DecodeError(f"RTU reply from unit {frame[0]}, asked {request.unit}", frame)
    return parse_reply_pdu(request, frame[1:-2])


# ------------------------------------------------------------------ the server's side


def rtu_request_length(head: bytes | bytearray) -> int | None:
    """Length of an RTU request from its first bytes; None when not known (yet)."""
    if len(head) < 2:
        return None
    fn = head[1]
    if 1 <= fn <= 6:
        return 8
    if fn in (15, 16):
        return 9 + head[6] if len(head) >= 7 else None
    return None


class RtuReader:
    """Modbus RTU requests (unit, PDU, CRC low byte first) from a serial byte stream.

    A frame of a known function is found by its length and CRC. Where two readings of
    the bytes both pass the CRC (noise that happens to make a valid frame with the start
    of a real one), the one that accounts for the data wins: a frame that leaves a
    remainder which is no frame loses to a frame starting inside it that ends where the
    data ends. A request of an unknown function (answered "illegal function") is taken
    only as the whole of what arrived, and only when no known request starts inside it.
    """

    __slots__ = ("_buf", "discarded")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.discarded = 0  # bytes thrown away while resynchronising

    def reset(self) -> None:
        """A silence longer than 3.5 characters ends whatever was being received."""
        self.discarded += len(self._buf)
        self._buf.clear()

    def feed(self, data: bytes) -> list[bytes]:
        """Append bytes; return every complete frame with a good CRC, without the CRC."""
        buf = self._buf
        buf += data
        out: list[bytes] = []
        while len(buf) >= 4:
            n = len(buf)
            length = rtu_request_length(buf)
            if length is not None:
                if n >= length and _crc_ok(buf, 0, length) and not _noise_start(buf, length):
                    out.append(bytes(buf[: length - 2]))
                    del buf[:length]
                    continue
            elif _crc_ok(buf, 0, n) and _later_frame(buf) is None:
                out.append(bytes(buf[: n - 2]))  # an unknown function, as a whole
                buf.clear()
                continue
            waiting = length is None or n < length
            if waiting and n < MAX_RTU_FRAME and _later_frame(buf) is None:
                break  # maybe the rest is still on its way
            del buf[0]  # noise: slide one byte and look again
            self.discarded += 1
        return out


def _frame_at(buf: bytearray, i: int) -> int | None:
    """The length of a whole request of known length with a good CRC at ``buf[i:]``."""
    length = rtu_request_length(buf[i : i + 7])
    if length is not None and len(buf) - i >= length and _crc_ok(buf, i, length):
        return length
    return None


def _later_frame(buf: bytearray) -> int | None:
    """Where the first whole request of known length with a good CRC after byte 0 starts."""
    for i in range(1, len(buf) - 3):
        if _frame_at(buf, i) is not None:
            return i
    return None


def _noise_start(buf: bytearray, length: int) -> bool:
    """Whether the valid frame ``buf[:length]`` is noise joined to the start of a real one:
    what follows it is no frame, and a frame starting inside it ends where the data ends."""
    n = len(buf)
    if length == n or _frame_at(buf, length) is not None:
        return False
    return any(_frame_at(buf, i) == n - i for i in range(1, length))


def _crc_ok(buf: bytearray, start: int, length: int) -> bool:
    end = start + length
    return crc16(buf[start : end - 2]) == buf[end - 2] | buf[end - 1] << 8
