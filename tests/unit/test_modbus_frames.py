"""The Modbus frame codec builds exact requests, accepts only replies that match their request, and rejects anything else with its raw bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import DecodeError
from protocol.modbus import (
    ExceptionReplyError,
    Function,
    Request,
    crc16,
    mbap_frame,
    parse_mbap_header,
    parse_reply_pdu,
    parse_rtu_reply,
    read_coils,
    read_input,
    rtu_frame,
    rtu_reply_length,
    rtu_silence,
    write_coil,
    write_registers,
)


def test_golden_rtu_request() -> None:
    # Read 2 input registers from unit 1 at address 0: the classic example frame.
    assert rtu_frame(1, read_input(1, 0, 2).pdu()) == bytes.fromhex("010400000002 71cb")


def test_crc_of_known_frame() -> None:
    assert crc16(bytes.fromhex("0103000a0001")) == 0x08A4  # on the wire: a4 08


def test_golden_mbap_request() -> None:
    assert mbap_frame(7, 3, read_input(3, 16, 7).pdu()) == bytes.fromhex(
        "0007000000060304001000 07".replace(" ", "")
    )


def _reply_for(req: Request, regs: list[int]) -> bytes:
    return bytes([req.function, 2 * len(regs)]) + b"".join(r.to_bytes(2, "big") for r in regs)


@given(
    st.integers(1, 247),
    st.integers(0, 1000),
    st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=125),
)
def test_register_reads_round_trip_over_rtu(unit: int, address: int, regs: list[int]) -> None:
    req = read_input(unit, address, len(regs))
    frame = rtu_frame(unit, _reply_for(req, regs))
    assert rtu_reply_length(req, frame[:2]) == len(frame)
    assert parse_rtu_reply(req, frame) == tuple(regs)


@given(st.lists(st.booleans(), min_size=1, max_size=40))
def test_coil_reads(bits: list[bool]) -> None:
    req = read_coils(1, 0, len(bits))
    packed = bytearray((len(bits) + 7) // 8)
    for i, b in enumerate(bits):
        packed[i // 8] |= int(b) << (i % 8)
    pdu = bytes([1, len(packed)]) + bytes(packed)
    assert parse_reply_pdu(req, pdu) == tuple(int(b) for b in bits)


@given(st.binary(max_size=300), st.integers(1, 125))
def test_any_bytes_parse_or_raise_typed(data: bytes, count: int) -> None:
    req = read_input(5, 0, count)
    try:
        values = parse_rtu_reply(req, data)
    except DecodeError as exc:
        assert exc.raw == data
    except ExceptionReplyError as exc:
        assert data[1] == 0x84
        assert exc.code == data[2]
    else:
        assert len(values) == count
        assert data[0] == 5


@given(st.binary(min_size=5, max_size=260), st.integers(0, 259), st.integers(1, 255))
def test_one_corrupted_byte_never_passes_crc_unnoticed(frame: bytes, pos: int, flip: int) -> None:
    good = rtu_frame(frame[0], frame[1:])
    pos %= len(good)
    bad = bytearray(good)
    bad[pos] ^= flip
    assert crc16(bytes(bad[:-2])) != int.from_bytes(bad[-2:], "little")


def test_reply_for_another_unit_is_refused() -> None:
    req = read_input(3, 0, 1)
    frame = rtu_frame(4, _reply_for(req, [42]))
    with pytest.raises(DecodeError, match="unit 4"):
        parse_rtu_reply(req, frame)


def test_exception_reply() -> None:
    req = read_input(3, 0, 1)
    with pytest.raises(ExceptionReplyError) as info:
        parse_rtu_reply(req, rtu_frame(3, bytes([0x84, 0x06])))
    assert info.value.code == 6
    assert "busy" in str(info.value)


def test_truncated_and_mismatched_replies() -> None:
    req = read_input(1, 0, 2)
    with pytest.raises(DecodeError, match="expected 6"):
        parse_reply_pdu(req, bytes([4, 2, 0, 1]))
    with pytest.raises(DecodeError, match="function 3"):
        parse_reply_pdu(req, bytes([3, 4, 0, 1, 0, 2]))
    with pytest.raises(DecodeError, match="byte count"):
        parse_reply_pdu(req, bytes([4, 5, 0, 1, 0, 2]))


def test_write_confirmations_must_echo() -> None:
    coil = write_coil(1, 0, True)
    assert coil.pdu() == bytes.fromhex("050000ff00")
    assert parse_reply_pdu(coil, coil.pdu()) == ()
    with pytest.raises(DecodeError, match="echo"):
        parse_reply_pdu(coil, bytes.fromhex("0500000000"))
    many = write_registers(1, 2, [0, 1250])
    assert many.function is Function.WRITE_MULTIPLE_REGISTERS
    assert parse_reply_pdu(many, bytes.fromhex("1000020002")) == ()


@given(st.binary(min_size=7, max_size=7))
def test_mbap_header_parses_or_rejects(header: bytes) -> None:
    try:
        tid, length, unit = parse_mbap_header(header)
    except DecodeError as exc:
        assert exc.raw == header
    else:
        assert header[2:4] == b"\x00\x00"
        assert 1 <= length <= 253
        assert tid == int.from_bytes(header[:2], "big")
        assert unit == header[6]


def test_requests_validate_their_fields() -> None:
    with pytest.raises(ValueError, match="unit id"):
        read_input(248, 0, 1)
    with pytest.raises(ValueError, match="count"):
        read_input(1, 0, 126)


def test_silence_follows_the_baud_rate() -> None:
    assert rtu_silence(9600) == pytest.approx(3.5 * 11 / 9600)
    assert rtu_silence(115200) == pytest.approx(1.75e-3)
