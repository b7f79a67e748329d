"""Modbus TCP framing, pure: the 7-byte MBAP header (transaction id, protocol 0, length,
unit id) before each PDU.

The master matches replies to requests by transaction id in
:class:`~protocol.modbus.tcp_master.TcpMaster`; the server's side (:class:`MbapReader`)
returns whole requests. A stream that breaks MBAP cannot be resynchronised (there is no
frame marker to hunt for): both sides refuse it with a :class:`~protocol.errors.DecodeError`
and the connection is closed.
"""

from __future__ import annotations

import struct

from protocol.errors import DecodeError

MBAP_HEADER = struct.Struct(">HHHB")
#: The MBAP length field counts the unit id and the PDU: 2..254.
MIN_LENGTH, MAX_LENGTH = 2, 254


def mbap_frame(transaction: int, unit: int, pdu: bytes) -> bytes:
    return MBAP_HEADER.pack(transaction & 0xFFFF, 0, len(pdu) + 1, unit) + pdu


def _pdu_length(proto: int, length: int, raw: bytes) -> int:
    """The PDU length a well-formed header announces; raises, with ``raw``, on a broken one."""
    if proto != 0:
        raise DecodeError(f"MBAP protocol id {proto}, expected 0", raw)
    if not MIN_LENGTH <= length <= MAX_LENGTH:
        raise DecodeError(f"MBAP length {length} outside 2..254", raw)
    return length - 1


def parse_mbap_header(header: bytes) -> tuple[int, int, int]:
    """(transaction id, PDU length, unit id) from the 7-byte MBAP header."""
    if len(header) != 7:
        raise DecodeError("MBAP header is 7 bytes", header)
    tid, proto, length, unit = MBAP_HEADER.unpack(header)
    return tid, _pdu_length(proto, length, header), unit


class MbapReader:
    """The server's side: whole requests out of a Modbus TCP stream, in any chunking."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        """Append bytes; return every complete (transaction id, unit id, PDU). A broken
        header raises :class:`~protocol.errors.DecodeError` with the bytes from it on."""
        buf = self._buf
        buf += data
        out: list[tuple[int, int, bytes]] = []
        pos = 0
        n = len(buf)
        unpack_from = MBAP_HEADER.unpack_from
        while n - pos >= 7:
            tid, proto, length, unit = unpack_from(buf, pos)
            if proto or not MIN_LENGTH <= length <= MAX_LENGTH:
                _pdu_length(proto, length, bytes(buf[pos:]))
            end = pos + 6 + length
            if end > n:
                break
            out.append((tid, unit, bytes(buf[pos + 7 : end])))
            pos = end
        if pos:
            del buf[:pos]
        return out
