"""Modbus application frames, pure: requests, responses, RTU (CRC-16) and TCP (MBAP) framing.

The gateway's Modbus port builds requests and checks replies with these functions, so
a reply is attributed to a request only when unit id, function code, length, CRC (RTU)
and transaction id (TCP) all match. Every parser raises
:class:`~protocol.errors.DecodeError` carrying the raw bytes, or
:class:`ExceptionReplyError` when the device answered with a Modbus exception.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

from protocol.errors import DecodeError, ProtocolError


class Function(IntEnum):
    READ_COILS = 1
    READ_DISCRETE_INPUTS = 2
    READ_HOLDING_REGISTERS = 3
    READ_INPUT_REGISTERS = 4
    WRITE_SINGLE_COIL = 5
    WRITE_SINGLE_REGISTER = 6
    WRITE_MULTIPLE_COILS = 15
    WRITE_MULTIPLE_REGISTERS = 16


EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}

_READS = {
    Function.READ_COILS,
    Function.READ_DISCRETE_INPUTS,
    Function.READ_HOLDING_REGISTERS,
    Function.READ_INPUT_REGISTERS,
}
_BIT_READS = {Function.READ_COILS, Function.READ_DISCRETE_INPUTS}
_REGISTERS, _BITS = 1, 2


class ExceptionReplyError(ProtocolError):
    """The device answered with a Modbus exception code (it is alive, but said no)."""

    def __init__(self, function: int, code: int) -> None:
        self.function = function
        self.code = code
        super().__init__(
            f"function {function}: exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})"
        )


@dataclass(frozen=True, slots=True)
class Request:
    """One Modbus request to one unit."""

    unit: int
    function: Function
    address: int
    count: int = 1
    values: tuple[int, ...] = ()
    # Worked out once: a poller sends the same request to a meter thousands of times.
    _pdu: bytes | None = field(init=False, repr=False, compare=False)
    _reply_length: int = field(init=False, repr=False, compare=False)
    _reads: int = field(init=False, repr=False, compare=False)  # _REGISTERS, _BITS or 0

    def __post_init__(self) -> None:
        if not 0 <= self.unit <= 247:
            raise ValueError(f"unit id {self.unit} outside 0..247")
        if not 0 <= self.address <= 0xFFFF:
            raise ValueError(f"address {self.address} outside 0..65535")
        fn = self.function
        bits = fn in _BIT_READS
        limit = 2000 if bits else 125
        if fn in _READS and not 1 <= self.count <= limit:
            raise ValueError(f"count {self.count} outside 1..{limit}")
        if fn is Function.WRITE_MULTIPLE_REGISTERS and not 1 <= len(self.values) <= 123:
            raise ValueError("write of 1..123 registers")
        if any(not 0 <= v <= 0xFFFF for v in self.values):
            raise ValueError("register values are 16-bit")
        if bits:
            length = 2 + (self.count + 7) // 8
        elif fn in _READS:
            length = 2 + 2 * self.count
        else:
            length = 5
        reads = 0
        if bits:
            reads = _BITS
        elif fn in _READS:
            reads = _REGISTERS
            _register_struct(self.count)
        object.__setattr__(self, "_pdu", self._build_pdu())
        object.__setattr__(self, "_reply_length", length)
        object.__setattr__(self, "_reads", reads)

    def _build_pdu(self) -> bytes | None:
        fn = self.function
        if fn in _READS:
            return struct.pack(">BHH", fn, self.address, self.count)
        if fn is Function.WRITE_SINGLE_COIL:
            return struct.pack(">BHH", fn, self.address, 0xFF00 if self.values[0] else 0)
        if fn is Function.WRITE_SINGLE_REGISTER:
            return struct.pack(">BHH", fn, self.address, self.values[0])
        if fn is Function.WRITE_MULTIPLE_REGISTERS:
            n = len(self.values)
            return struct.pack(f">BHHB{n}H", fn, self.address, n, 2 * n, *self.values)
        return None

    def pdu(self) -> bytes:
        if self._pdu is None:
            raise ValueError(f"function {self.function} is not supported by this client")
        return self._pdu

    def reply_pdu_length(self) -> int:
        """Length of a normal (non-exception) reply PDU."""
        return self._reply_length


_REGISTER_STRUCTS: dict[int, struct.Struct] = {}


def _register_struct(count: int) -> struct.Struct:
    """Big-endian 16-bit registers after a reply's byte count, one shared ``Struct`` per size."""
    found = _REGISTER_STRUCTS.get(count)
    if found is None:
        found = _REGISTER_STRUCTS[count] = struct.Struct(f">{count}H")
    return found


def read_input(unit: int, address: int, count: int) -> Request:
    return Request(unit, Function.READ_INPUT_REGISTERS, address, count)


def read_holding(unit: int, address: int, count: int) -> Request:
    return Request(unit, Function.READ_HOLDING_REGISTERS, address, count)


def read_coils(unit: int, address: int, count: int) -> Request:
    return Request(unit, Function.READ_COILS, address, count)


def write_coil(unit: int, address: int, on: bool) -> Request:
    return Request(unit, Function.WRITE_SINGLE_COIL, address, 1, (1 if on else 0,))


def write_registers(unit: int, address: int, values: list[int] | tuple[int, ...]) -> Request:
    if len(values) == 1:
        return Request(unit, Function.WRITE_SINGLE_REGISTER, address, 1, tuple(values))
    return Request(unit, Function.WRITE_MULTIPLE_REGISTERS, address, len(values), tuple(values))


def parse_reply_pdu(request: Request, pdu: bytes) -> tuple[int, ...]:
    """Check a reply PDU against its request; registers (or bits as 0/1) for reads,
    an empty tuple for a confirmed write."""
    if not pdu:
        raise DecodeError("empty reply", pdu)
    fn = pdu[0]
    function = request.function
    if fn == function | 0x80:
        if len(pdu) != 2:
            raise DecodeError("exception reply of the wrong length", pdu)
        raise ExceptionReplyError(function, pdu[1])
    if fn != function:
        raise DecodeError(f"reply to function {fn}, asked {int(function)}", pdu)
    if len(pdu) != request._reply_length:
        raise DecodeError(f"reply of {len(pdu)} bytes, expected {request._reply_length}", pdu)
    reads = request._reads
    if reads:
        if pdu[1] != len(pdu) - 2:
            raise DecodeError("byte count does not match the reply length", pdu)
        if reads == _REGISTERS:
            return _REGISTER_STRUCTS[request.count].unpack_from(pdu, 2)
        return tuple((pdu[2 + i // 8] >> (i % 8)) & 1 for i in range(request.count))
    echo = pdu[1:5]
    if function is Function.WRITE_MULTIPLE_REGISTERS:
        expected = struct.pack(">HH", request.address, len(request.values))
    else:
        expected = request.pdu()[1:5]
    if echo != expected:
        raise DecodeError("write confirmation does not echo the request", pdu)
    return ()


# ------------------------------------------------------------------ RTU framing


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """Modbus RTU CRC-16 (polynomial 0xA001 reflected, initial 0xFFFF)."""
    crc = 0xFFFF
    for b in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ b) & 0xFF]
    return crc


def rtu_frame(unit: int, pdu: bytes) -> bytes:
    body = bytes([unit]) + pdu
    return body + crc16(body).to_bytes(2, "little")


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


def rtu_char_time(baud: int) -> float:
    """Seconds per character on the wire: 11 bits (start, 8 data, parity or 2nd stop, stop)."""
    return 11.0 / baud


def rtu_silence(baud: int) -> float:
    """The 3.5-character inter-frame silence; fixed at 1.75 ms above 19200 baud."""
    return 1.75e-3 if baud > 19200 else 3.5 * rtu_char_time(baud)


# ------------------------------------------------------------------ TCP (MBAP) framing

MBAP_HEADER = struct.Struct(">HHHB")


def mbap_frame(transaction: int, unit: int, pdu: bytes) -> bytes:
    return MBAP_HEADER.pack(transaction & 0xFFFF, 0, len(pdu) + 1, unit) + pdu


def parse_mbap_header(header: bytes) -> tuple[int, int, int]:
    """(transaction id, PDU length, unit id) from the 7-byte MBAP header."""
    if len(header) != 7:
        raise DecodeError("MBAP header is 7 bytes", header)
    tid, proto, length, unit = MBAP_HEADER.unpack(header)
    if proto != 0:
        raise DecodeError(f"MBAP protocol id {proto}, expected 0", header)
    if not 2 <= length <= 254:
        raise DecodeError(f"MBAP length {length} outside 2..254", header)
    return tid, length - 1, unit
