"""Moved: the simulator frames with the one Modbus codec, :mod:`protocol.modbus`. These
names stay importable from here for code written before the move."""

from __future__ import annotations

from protocol.errors import DecodeError as FramingError
from protocol.modbus.mbap import MbapReader
from protocol.modbus.mbap import mbap_frame as mbap_reply
from protocol.modbus.rtu import MAX_RTU_FRAME, RtuReader, rtu_frame, rtu_request_length

__all__ = [
    "MAX_RTU_FRAME",
    "FramingError",
    "MbapReader",
    "RtuReader",
    "mbap_reply",
    "rtu_frame",
    "rtu_request_length",
]
