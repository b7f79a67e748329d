"""Split a byte stream into Modbus requests, pure: MBAP for TCP, RTU (CRC-16) for serial.

Readers only buffer bytes and return whole frames (h11 style): the shell feeds what the
socket or the pty delivered, in whatever pieces. A TCP stream that breaks MBAP cannot
be resynchronised, so :class:`MbapReader` raises :class:`FramingError` and the shell
closes the connection. An RTU line can: :class:`RtuReader` drops bytes until a frame
with a valid CRC starts, as a real slave does after noise.
"""

from __future__ import annotations

import struct

from meter_sim.errors import SimError
from protocol.modbus import crc16

_MBAP = struct.Struct(">HHHB")
MAX_RTU_FRAME = 256


class FramingError(SimError):
    """The peer broke the framing (its fault); carries the offending bytes."""

    def __init__(self, problem: str, raw: bytes) -> None:
        self.problem = problem
        self.raw = raw
        super().__init__(f"{problem} (raw {raw[:16].hex()})")


class MbapReader:
    """Modbus TCP: 7-byte MBAP header (transaction, protocol 0, length, unit) then the PDU."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        """Append bytes; return every complete (transaction id, unit id, PDU)."""
        buf = self._buf
        buf += data
        out: list[tuple[int, int, bytes]] = []
        pos = 0
        n = len(buf)
        while n - pos >= 7:
            tid, proto, length, unit = _MBAP.unpack_from(buf, pos)
            if proto != 0:
                raise FramingError(f"MBAP protocol id {proto}, expected 0", bytes(buf[pos:]))
            if not 2 <= length <= 254:
                raise FramingError(f"MBAP length {length} outside 2..254", bytes(buf[pos:]))
            end = pos + 6 + length
            if end > n:
                break
            out.append((tid, unit, bytes(buf[pos + 7 : end])))
            pos = end
        if pos:
            del buf[:pos]
        return out


def mbap_reply(tid: int, unit: int, pdu: bytes) -> bytes:
    return _MBAP.pack(tid, 0, len(pdu) + 1, unit) + pdu


def rtu_frame(unit: int, pdu: bytes) -> bytes:
    body = bytes((unit,)) + pdu
    return body + crc16(body).to_bytes(2, "little")


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
    """Modbus RTU requests (unit, PDU, CRC low byte first) from a serial byte stream."""

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
            length = rtu_request_length(buf)
            if length is not None and len(buf) >= length and _crc_ok(buf, length):
                out.append(bytes(buf[: length - 2]))
                del buf[:length]
                continue
            if length is None:
                # Unknown function: the shortest CRC-valid prefix is the frame.
                found = next((k for k in range(4, len(buf) + 1) if _crc_ok(buf, k)), None)
                if found is not None:
                    out.append(bytes(buf[: found - 2]))
                    del buf[:found]
                    continue
            waiting = length is None or len(buf) < length
            if waiting and len(buf) < MAX_RTU_FRAME and not _later_frame(buf):
                break  # maybe the rest is still on its way
            del buf[0]  # noise: slide one byte and look again
            self.discarded += 1
        return out


def _later_frame(buf: bytearray) -> bool:
    """Whether a whole request of known length with a good CRC starts after byte 0."""
    for i in range(1, len(buf) - 3):
        length = rtu_request_length(buf[i : i + 7])
        if length is not None and len(buf) - i >= length and _crc_ok(buf[i:], length):
            return True
    return False


def _crc_ok(buf: bytearray, length: int) -> bool:
    return crc16(bytes(buf[: length - 2])) == buf[length - 2] | buf[length - 1] << 8
