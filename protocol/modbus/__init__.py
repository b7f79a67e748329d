"""Modbus, pure: PDUs, RTU and TCP framing, and the master as a session (no I/O).

The one Modbus codec of the project: the gateway's ports and the simulator both frame
and check with it. Rooms: :mod:`~protocol.modbus.pdu` (requests, replies, exception
codes), :mod:`~protocol.modbus.rtu` (CRC-16 framing, the line's timing, the server's
request reader), :mod:`~protocol.modbus.mbap` (TCP framing), and the masters as pure
sessions in aioquic's shape, :mod:`~protocol.modbus.tcp_master` and
:mod:`~protocol.modbus.rtu_master`, with their :mod:`~protocol.modbus.events`.

Why our own codec and not pymodbus's PDU and framer classes (measured by
``bench/bench_modbus_codec.py``, one PE-1 reading, both ways in the same run; more in
docs/overview.md): on the gateway's Modbus TCP path ours takes 1.3 to 2.2 µs a reading,
pymodbus 3.16's public API 12 to 17 µs (+11 to +15 µs, 5 to 7% of the gateway's whole
budget of 200 µs a reading); on RTU 5 to 7 µs against 30 µs. And its framers do not
keep our rules (a broken MBAP header waits for more data instead of being refused; a
bad RTU CRC drops the whole buffer; frames for another unit or transaction are skipped,
not refused; decode errors come back as ``None`` with a log line), so we would wrap
every call in our checks and still pay for it. pymodbus is the interoperability peer in
the tests instead (its clients against our simulator, our ports against its server),
installed with the test extra.
"""

from protocol.modbus.events import (
    Event,
    ReplyReceived,
    RequestFailed,
    SessionUsageError,
    StreamOutOfStep,
)
from protocol.modbus.mbap import MBAP_HEADER, MbapReader, mbap_frame, parse_mbap_header
from protocol.modbus.pdu import (
    EXCEPTION_NAMES,
    MAX_READ_BITS,
    MAX_READ_REGISTERS,
    MAX_WRITE_COILS,
    MAX_WRITE_REGISTERS,
    ExceptionCode,
    ExceptionReplyError,
    Function,
    Request,
    exception_pdu,
    is_write,
    pack_bits,
    parse_reply_pdu,
    read_coils,
    read_holding,
    read_input,
    unpack_bits,
    write_coil,
    write_registers,
)
from protocol.modbus.rtu import (
    MAX_RTU_FRAME,
    RtuReader,
    crc16,
    parse_rtu_reply,
    rtu_char_time,
    rtu_frame,
    rtu_reply_length,
    rtu_request_length,
    rtu_silence,
)
from protocol.modbus.rtu_master import RtuMaster
from protocol.modbus.tcp_master import TcpMaster

__all__ = [
    "EXCEPTION_NAMES",
    "MAX_READ_BITS",
    "MAX_READ_REGISTERS",
    "MAX_RTU_FRAME",
    "MAX_WRITE_COILS",
    "MAX_WRITE_REGISTERS",
    "MBAP_HEADER",
    "Event",
    "ExceptionCode",
    "ExceptionReplyError",
    "Function",
    "MbapReader",
    "ReplyReceived",
    "Request",
    "RequestFailed",
    "RtuMaster",
    "RtuReader",
    "SessionUsageError",
    "StreamOutOfStep",
    "TcpMaster",
    "crc16",
    "exception_pdu",
    "is_write",
    "mbap_frame",
    "pack_bits",
    "parse_mbap_header",
    "parse_reply_pdu",
    "parse_rtu_reply",
    "read_coils",
    "read_holding",
    "read_input",
    "rtu_char_time",
    "rtu_frame",
    "rtu_reply_length",
    "rtu_request_length",
    "rtu_silence",
    "unpack_bits",
    "write_coil",
    "write_registers",
]
