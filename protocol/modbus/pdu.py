"""Modbus PDUs, pure: requests built and checked, replies checked and decoded, and the
encoding helpers a server needs to answer (exception replies, packed bits).

The master side accepts a reply only when its function, length, byte count and (for a
write) echo all match the request it answers; anything else raises
:class:`~protocol.errors.DecodeError` carrying the raw bytes, or
:class:`ExceptionReplyError` when the device said no.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
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


class ExceptionCode(IntEnum):
    """The exception codes of the Modbus application protocol (v1.1b3, section 7)."""

    ILLEGAL_FUNCTION = 1
    ILLEGAL_DATA_ADDRESS = 2
    ILLEGAL_DATA_VALUE = 3
    SERVER_DEVICE_FAILURE = 4
    ACKNOWLEDGE = 5
    SERVER_DEVICE_BUSY = 6
    GATEWAY_PATH_UNAVAILABLE = 10
    GATEWAY_TARGET_DEVICE_FAILED_TO_RESPOND = 11


#: Each exception code's name in words ("illegal data address"), for messages.
EXCEPTION_NAMES = {int(c): c.name.lower().replace("_", " ") for c in ExceptionCode}

#: The specification's limits on one request.
MAX_READ_BITS = 2000
MAX_READ_REGISTERS = 125
MAX_WRITE_COILS = 1968
MAX_WRITE_REGISTERS = 123

READS = frozenset(
    {
        Function.READ_COILS,
        Function.READ_DISCRETE_INPUTS,
        Function.READ_HOLDING_REGISTERS,
        Function.READ_INPUT_REGISTERS,
    }
)
BIT_READS = frozenset({Function.READ_COILS, Function.READ_DISCRETE_INPUTS})
WRITES = frozenset(
    {
        Function.WRITE_SINGLE_COIL,
        Function.WRITE_SINGLE_REGISTER,
        Function.WRITE_MULTIPLE_COILS,
        Function.WRITE_MULTIPLE_REGISTERS,
    }
)
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
        bits = fn in BIT_READS
        limit = MAX_READ_BITS if bits else MAX_READ_REGISTERS
        if fn in READS and not 1 <= self.count <= limit:
            raise ValueError(f"count {self.count} outside 1..{limit}")
        if (
            fn is Function.WRITE_MULTIPLE_REGISTERS
            and not 1 <= len(self.values) <= MAX_WRITE_REGISTERS
        ):
            raise ValueError(f"write of 1..{MAX_WRITE_REGISTERS} registers")
        if any(not 0 <= v <= 0xFFFF for v in self.values):
            raise ValueError("register values are 16-bit")
        if bits:
            length = 2 + (self.count + 7) // 8
        elif fn in READS:
            length = 2 + 2 * self.count
        else:
            length = 5
        reads = 0
        if bits:
            reads = _BITS
        elif fn in READS:
            reads = _REGISTERS
            _register_struct(self.count)
        object.__setattr__(self, "_pdu", self._build_pdu())
        object.__setattr__(self, "_reply_length", length)
        object.__setattr__(self, "_reads", reads)

    def _build_pdu(self) -> bytes | None:
        fn = self.function
        if fn in READS:
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
        return unpack_bits(pdu[2:], request.count)
    echo = pdu[1:5]
    if function is Function.WRITE_MULTIPLE_REGISTERS:
        expected = struct.pack(">HH", request.address, len(request.values))
    else:
        expected = request.pdu()[1:5]
    if echo != expected:
        raise DecodeError("write confirmation does not echo the request", pdu)
    return ()


# ------------------------------------------------------------------ the server's side


def exception_pdu(function: int, code: int) -> bytes:
    """The exception reply to ``function``: the function with its top bit set, the code."""
    return bytes(((function | 0x80) & 0xFF, code))


def pack_bits(bits: Sequence[int]) -> bytes:
    """Coils or discrete inputs as a reply carries them: 8 a byte, the first in bit 0."""
    out = bytearray((len(bits) + 7) // 8)
    for i, b in enumerate(bits):
        if b:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def unpack_bits(data: bytes, count: int) -> tuple[int, ...]:
    """The first ``count`` bits of ``data`` packed as :func:`pack_bits` packs them."""
    return tuple((data[i // 8] >> (i % 8)) & 1 for i in range(count))


def is_write(pdu: bytes) -> bool:
    """Whether a request PDU writes (a broadcast to unit 0 may only write)."""
    return bool(pdu) and pdu[0] in WRITES
