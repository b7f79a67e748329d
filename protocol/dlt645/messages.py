"""DL/T 645-2007 requests and replies as frozen dataclasses.

Each message turns into a :class:`~protocol.dlt645.frame.Frame` (``to_frame``) and bytes
(``to_bytes``), and back (``from_frame``, ``from_bytes``); :func:`decode_request` and
:func:`decode_reply` pick the message a frame holds. A frame whose data does not fit its
message raises :class:`PayloadError` with the frame's bytes. What every message shares
(the bytes round trip, the control-code checks) is in protocol/dlt645/message_base.py.

Data identifiers (DI) are written ``DI3 DI2 DI1 DI0`` (``00010000`` is forward active
energy) and sent ``DI0`` first. Passwords are ``PA P0 P1 P2`` (PA the level), operator
codes ``C0..C3``, both low byte first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Self

from protocol.dlt645.clock import MeterTime
from protocol.dlt645.credentials import OperatorCode, Password
from protocol.dlt645.frame import (
    BROADCAST,
    ERROR,
    FOLLOWS,
    REPLY,
    WILDCARD,
    Address,
    Frame,
    Function,
)
from protocol.dlt645.message_base import MessageBase, di_of, expect_control, expect_reply
from protocol.dlt645.message_base import PayloadError as PayloadError  # noqa: PLC0414 (re-export)
from protocol.dlt645.terms import ControlCommand, ErrorWord, di_bytes
from protocol.errors import DecodeError, EncodeError

# ------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class ReadRequest(MessageBase):
    """11H: read one data identifier (``params``: the block count and time some load-record
    identifiers take after the DI)."""

    address: Address
    di: int
    params: bytes = b""

    def to_frame(self) -> Frame:
        return Frame(self.address, Function.READ, di_bytes(self.di) + self.params)

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        expect_control(frame, Function.READ, "read request")
        if len(frame.data) not in (4, 5, 10):
            raise PayloadError(f"read request of {len(frame.data)} data bytes", frame.to_bytes())
        return cls(frame.address, di_of(frame, frame.data), frame.data[4:])


@dataclass(frozen=True, slots=True)
class ReadFollowUpRequest(MessageBase):
    """12H: the next frame (``seq`` 1, 2, ...) of a reply that said more follows."""

    address: Address
    di: int
    seq: int

    def to_frame(self) -> Frame:
        if not 0 <= self.seq <= 0xFF:
            raise EncodeError(f"frame sequence {self.seq} is not a byte")
        return Frame(self.address, Function.READ_FOLLOW_UP, di_bytes(self.di) + bytes((self.seq,)))

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        expect_control(frame, Function.READ_FOLLOW_UP, "follow-up request")
        if len(frame.data) != 5:
            raise PayloadError(
                f"follow-up request of {len(frame.data)} data bytes", frame.to_bytes()
            )
        return cls(frame.address, di_of(frame, frame.data), frame.data[4])


@dataclass(frozen=True, slots=True)
class ReadAddressRequest(MessageBase):
    """13H to the wildcard address: on a point-to-point link the meter answers its address."""

    address: Address = WILDCARD

    def to_frame(self) -> Frame:
        return Frame(self.address, Function.READ_ADDRESS)

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        expect_control(frame, Function.READ_ADDRESS, "read-address request")
        if frame.data:
            raise PayloadError("read-address request with data", frame.to_bytes())
        return cls(frame.address)


@dataclass(frozen=True, slots=True)
class WriteRequest(MessageBase):
    """14H: write one data identifier with a password and operator code."""

    address: Address
    di: int
    password: Password
    operator: OperatorCode
    payload: bytes

    def to_frame(self) -> Frame:
        data = di_bytes(self.di) + self.password.to_bytes() + self.operator.raw + self.payload
        return Frame(self.address, Function.WRITE, data)

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        expect_control(frame, Function.WRITE, "write request")
        data = frame.data
        if len(data) < 12:
            raise PayloadError(f"write request of {len(data)} data bytes", frame.to_bytes())
        return cls(
            frame.address,
            di_of(frame, data),
            Password.from_bytes(data[4:8]),
            OperatorCode(data[8:12]),
            data[12:],
        )


@dataclass(frozen=True, slots=True)
class BroadcastTime(MessageBase):
    """08H to every meter (address 99..99): set the clock; no meter replies."""

    when: MeterTime
    address: Address = BROADCAST

    def to_frame(self) -> Frame:
        return Frame(self.address, Function.BROADCAST_TIME, self.when.to_bytes())

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        expect_control(frame, Function.BROADCAST_TIME, "broadcast time")
        try:
            when = MeterTime.from_bytes(frame.data)
        except DecodeError as exc:
            raise PayloadError(f"broadcast time: {exc.problem}", frame.to_bytes()) from None
        return cls(when, frame.address)


@dataclass(frozen=True, slots=True)
class ControlRequest(MessageBase):
    """1CH: trip, allow close, close, alarm, protect (N1), valid until a meter time (N3..N8)."""

    address: Address
    password: Password
    operator: OperatorCode
    command: ControlCommand
    valid_until: MeterTime

    SIZE: ClassVar[int] = 16

    def to_frame(self) -> Frame:
        data = (
            self.password.to_bytes()
            + self.operator.raw
            + bytes((self.command, 0))
            + self.valid_until.to_bytes()
        )
        return Frame(self.address, Function.CONTROL, data)

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        expect_control(frame, Function.CONTROL, "control request")
        data = frame.data
        if len(data) != cls.SIZE:
            raise PayloadError(
                f"control request of {len(data)} data bytes, expected {cls.SIZE} "
                "(an encrypted command needs the utility's security module)",
                frame.to_bytes(),
            )
        try:
            command = ControlCommand(data[8])
        except ValueError:
            raise PayloadError(f"unknown control command {data[8]:02X}", frame.to_bytes()) from None
        try:
            valid_until = MeterTime.from_bytes(data[10:16])
        except DecodeError as exc:
            raise PayloadError(f"valid-until: {exc.problem}", frame.to_bytes()) from None
        return cls(
            frame.address,
            Password.from_bytes(data[0:4]),
            OperatorCode(data[4:8]),
            command,
            valid_until,
        )


Request = (
    ReadRequest
    | ReadFollowUpRequest
    | ReadAddressRequest
    | WriteRequest
    | BroadcastTime
    | ControlRequest
)

_REQUESTS: dict[int, type[Request]] = {
    Function.READ: ReadRequest,
    Function.READ_FOLLOW_UP: ReadFollowUpRequest,
    Function.READ_ADDRESS: ReadAddressRequest,
    Function.WRITE: WriteRequest,
    Function.BROADCAST_TIME: BroadcastTime,
    Function.CONTROL: ControlRequest,
}


def decode_request(frame: Frame) -> Request:
    """The request a master's frame holds; PayloadError for replies and functions we do not
    serve."""
    kind = _REQUESTS.get(frame.control)
    if kind is None:
        raise PayloadError(
            f"control code {frame.control:02X} is not a request we serve", frame.to_bytes()
        )
    return kind.from_frame(frame)


# ------------------------------------------------------------------------- replies


@dataclass(frozen=True, slots=True)
class ReadReply(MessageBase):
    """91H (B1H when ``follows``): the identifier read and its data bytes."""

    address: Address
    di: int
    payload: bytes
    follows: bool = False

    def to_frame(self) -> Frame:
        control = REPLY | Function.READ | (FOLLOWS if self.follows else 0)
        return Frame(self.address, control, di_bytes(self.di) + self.payload)

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        expect_reply(frame, Function.READ, "read reply", follows=True)
        return cls(frame.address, di_of(frame, frame.data), frame.data[4:], frame.follows)


@dataclass(frozen=True, slots=True)
class ReadFollowUpReply(MessageBase):
    """92H (B2H when ``follows``): more data of an identifier, then the frame's ``seq``."""

    address: Address
    di: int
    payload: bytes
    seq: int
    follows: bool = False

    def to_frame(self) -> Frame:
        control = REPLY | Function.READ_FOLLOW_UP | (FOLLOWS if self.follows else 0)
        return Frame(self.address, control, di_bytes(self.di) + self.payload + bytes((self.seq,)))

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        expect_reply(frame, Function.READ_FOLLOW_UP, "follow-up reply", follows=True)
        if len(frame.data) < 5:
            raise PayloadError("follow-up reply without a sequence number", frame.to_bytes())
        data = frame.data
        return cls(frame.address, di_of(frame, data), data[4:-1], data[-1], frame.follows)


@dataclass(frozen=True, slots=True)
class ReadAddressReply(MessageBase):
    """93H: the meter's address (in the frame's address field and in its data)."""

    address: Address

    def to_frame(self) -> Frame:
        return Frame(self.address, REPLY | Function.READ_ADDRESS, self.address.raw)

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        expect_reply(frame, Function.READ_ADDRESS, "read-address reply")
        if len(frame.data) != 6:
            raise PayloadError("read-address reply without 6 address bytes", frame.to_bytes())
        if frame.data != frame.address.raw:
            raise PayloadError(
                "read-address reply whose data and address disagree", frame.to_bytes()
            )
        return cls(frame.address)


@dataclass(frozen=True, slots=True)
class WriteReply(MessageBase):
    """94H: the write was carried out."""

    address: Address

    def to_frame(self) -> Frame:
        return Frame(self.address, REPLY | Function.WRITE)

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        expect_reply(frame, Function.WRITE, "write reply")
        if frame.data:
            raise PayloadError("write reply with data (it has none)", frame.to_bytes())
        return cls(frame.address)


@dataclass(frozen=True, slots=True)
class ControlReply(MessageBase):
    """9CH: the control command was accepted."""

    address: Address

    def to_frame(self) -> Frame:
        return Frame(self.address, REPLY | Function.CONTROL)

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        expect_reply(frame, Function.CONTROL, "control reply")
        if frame.data:
            raise PayloadError("control reply with data (it has none)", frame.to_bytes())
        return cls(frame.address)


@dataclass(frozen=True, slots=True)
class ErrorReply(MessageBase):
    """C0H | function (D1H, D4H, DCH, ...): the meter refused, ``error`` says why."""

    address: Address
    function: int
    error: ErrorWord
    extra: bytes = field(default=b"")

    def to_frame(self) -> Frame:
        if not 0 <= self.function <= 0x1F:
            raise EncodeError(f"function {self.function} is not 5 bits")
        return Frame(self.address, REPLY | ERROR | self.function, bytes((self.error,)) + self.extra)

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        if frame.control & 0xC0 != 0xC0:
            raise PayloadError(
                f"control code {frame.control:02X} is not an error reply", frame.to_bytes()
            )
        if not frame.data:
            raise PayloadError("error reply without an error word", frame.to_bytes())
        return cls(frame.address, frame.function, ErrorWord(frame.data[0]), frame.data[1:])

    @property
    def reasons(self) -> list[str]:
        """The error word's bits by name (``["password"]``); ``["unknown"]`` if none."""
        names = [flag.name.lower() for flag in ErrorWord if flag in self.error and flag.name]
        return names or ["unknown"]


Reply = ReadReply | ReadFollowUpReply | ReadAddressReply | WriteReply | ControlReply | ErrorReply

_REPLIES: dict[int, type[Reply]] = {
    Function.READ: ReadReply,
    Function.READ_FOLLOW_UP: ReadFollowUpReply,
    Function.READ_ADDRESS: ReadAddressReply,
    Function.WRITE: WriteReply,
    Function.CONTROL: ControlReply,
}


def decode_reply(frame: Frame) -> Reply:
    """The reply a meter's frame holds; PayloadError for requests and unknown functions."""
    if not frame.is_reply:
        raise PayloadError(f"control code {frame.control:02X} is not a reply", frame.to_bytes())
    if frame.is_error:
        return ErrorReply.from_frame(frame)
    kind = _REPLIES.get(frame.function)
    if kind is None:
        raise PayloadError(f"reply to function {frame.function:02X} we never ask", frame.to_bytes())
    return kind.from_frame(frame)
