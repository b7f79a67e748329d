"""The server's frame readers (the simulator's) return exactly the frames sent, in any chunking, resync after noise, reject broken MBAP with the raw bytes, and never fail any other way on arbitrary input."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from protocol.errors import DecodeError
from protocol.modbus import MbapReader, RtuReader, rtu_frame
from protocol.modbus import mbap_frame as mbap_reply

pdus = st.one_of(
    st.builds(
        lambda fn, a, c: struct.pack(">BHH", fn, a, c),
        st.integers(1, 6),
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFF),
    ),
    st.builds(
        lambda fn, a, data: struct.pack(">BHHB", fn, a, len(data) // 2, len(data)) + data,
        st.sampled_from([15, 16]),
        st.integers(0, 0xFFFF),
        st.binary(max_size=246),
    ),
)
frames = st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 247), pdus), max_size=12)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def test_golden_rtu_vector() -> None:
    """Read one holding register at 0 from unit 1: the well-known frame 01 03 00 00 00 01 84 0A."""
    assert rtu_frame(1, bytes.fromhex("0300000001")) == bytes.fromhex("010300000001840a")


@given(frames=frames, cuts=st.lists(st.integers(0, 10_000), max_size=20))
def test_mbap_frames_survive_any_chunking(
    frames: list[tuple[int, int, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(mbap_reply(tid, unit, pdu) for tid, unit, pdu in frames)
    reader = MbapReader()
    got = [f for chunk in chunked(stream, cuts) for f in reader.feed(chunk)]
    assert got == frames


@given(st.binary(max_size=600))
def test_mbap_reader_on_arbitrary_bytes_returns_frames_or_a_framing_error(data: bytes) -> None:
    try:
        for tid, unit, pdu in MbapReader().feed(data):
            assert 0 <= tid <= 0xFFFF
            assert 0 <= unit <= 0xFF
            assert 1 <= len(pdu) <= 253
    except DecodeError as exc:
        assert exc.raw


def test_mbap_reader_rejects_a_foreign_protocol_id_with_the_raw_bytes() -> None:
    raw = struct.pack(">HHHB", 1, 7, 6, 1) + bytes(5)
    with pytest.raises(DecodeError, match="protocol id 7") as info:
        MbapReader().feed(raw)
    assert info.value.raw == raw


@given(frames=frames, cuts=st.lists(st.integers(0, 10_000), max_size=20))
def test_rtu_frames_survive_any_chunking(
    frames: list[tuple[int, int, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(rtu_frame(unit, pdu) for _, unit, pdu in frames)
    reader = RtuReader()
    got = [f for chunk in chunked(stream, cuts) for f in reader.feed(chunk)]
    assert got == [bytes((unit,)) + pdu for _, unit, pdu in frames]
    assert reader.discarded == 0


@given(noise=st.binary(min_size=1, max_size=300), unit=st.integers(1, 247), pdu=pdus)
def test_rtu_reader_resyncs_after_noise_and_a_silence(noise: bytes, unit: int, pdu: bytes) -> None:
    reader = RtuReader()
    reader.feed(noise)
    reader.reset()  # the silence after the noise
    assert reader.feed(rtu_frame(unit, pdu)) == [bytes((unit,)) + pdu]


@given(unit=st.integers(1, 247), address=st.integers(0, 0xFFFF), junk=st.binary(max_size=3))
# noise and the start of the request that pass the CRC as one frame: of an unknown
# function (unit 7 read as function 7), of a known one (unit 3 read as function 3)
@example(unit=7, address=533, junk=b"\xba")
@example(unit=3, address=213, junk=b"\xba")
def test_rtu_reader_slides_past_short_noise_before_a_read(
    unit: int, address: int, junk: bytes
) -> None:
    frame = rtu_frame(unit, struct.pack(">BHH", 4, address, 1))
    reader = RtuReader()
    got = reader.feed(junk + frame)
    assert got[-1:] == [frame[:-2]]


@given(st.binary(max_size=1000))
def test_rtu_reader_never_fails_on_arbitrary_bytes(data: bytes) -> None:
    reader = RtuReader()
    for frame in reader.feed(data):
        assert len(frame) >= 2
    assert reader.discarded <= len(data)


def test_rtu_reader_finds_a_frame_of_an_unknown_function_by_its_crc() -> None:
    frame = rtu_frame(3, bytes((0x2B, 0x0E, 0x01, 0x00)))
    assert RtuReader().feed(frame) == [frame[:-2]]
