"""The DL/T 645 codec builds the standard's frames byte for byte (checked against the dlt645 package's encoder), round-trips every message and value, finds frames in noisy streams however they are split, and answers any garbage with nothing but its own typed errors."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from dlt645.protocol.protocol import DLT645Protocol
from hypothesis import given
from hypothesis import strategies as st

from protocol.dlt645.bcd import BitsFormat, DigitsFormat, NumberFormat, bcd_digits, digits_of
from protocol.dlt645.clock import MeterTime
from protocol.dlt645.credentials import OperatorCode, Password
from protocol.dlt645.frame import (
    BROADCAST,
    MAX_DATA,
    WILDCARD,
    Address,
    Deframer,
    Frame,
    FrameError,
    Function,
)
from protocol.dlt645.messages import (
    BroadcastTime,
    ControlReply,
    ControlRequest,
    ErrorReply,
    PayloadError,
    ReadAddressReply,
    ReadAddressRequest,
    ReadFollowUpReply,
    ReadFollowUpRequest,
    ReadReply,
    ReadRequest,
    WriteReply,
    WriteRequest,
    decode_reply,
    decode_request,
)
from protocol.dlt645.terms import ControlCommand, ErrorWord, parse_di
from protocol.errors import DecodeError, EncodeError

METER = Address.parse("000000000001")


# ---------------------------------------------------------------------- golden frames


def test_golden_read_of_forward_active_energy() -> None:
    # 68 address 68 11 04 (00 01 00 00 + 33H, DI0 first) CS 16, after four wake-up bytes.
    expected = bytes.fromhex("FEFEFEFE 68 010000000000 68 11 04 33333433 B3 16".replace(" ", ""))
    assert ReadRequest(METER, 0x00010000).to_bytes() == expected


def test_golden_energy_reply_decodes_to_its_value() -> None:
    # 91H, DI, then 12345.67 kWh as BCD low byte first: 67 45 23 01 (+33H each).
    raw = bytes.fromhex("68 010000000000 68 91 08 33333433 9A785634 00 16".replace(" ", ""))
    raw = raw[:-2] + bytes((sum(raw[:-2]) & 0xFF, 0x16))
    reply = decode_reply(Frame.from_bytes(raw))
    assert isinstance(reply, ReadReply)
    assert reply.di == 0x00010000
    assert NumberFormat.parse("XXXXXX.XX").decode(reply.payload) == 1234567


@given(
    st.binary(min_size=6, max_size=6),
    st.sampled_from([0x08, 0x11, 0x13, 0x14, 0x1C, 0x91, 0xB1, 0xD1, 0x9C, 0xDC]),
    st.binary(max_size=MAX_DATA),
    st.integers(0, 4),
)
def test_frames_match_the_dlt645_package_encoder(
    address: bytes, control: int, data: bytes, preamble: int
) -> None:
    """An independent implementation builds the same bytes from the same fields."""
    ours = Frame(Address(address), control, data).to_bytes(preamble)
    theirs = bytes(DLT645Protocol.build_frame(address, control, data, preamble_count=preamble))
    assert ours == theirs


# ---------------------------------------------------------------------- frames


frames = st.builds(
    Frame,
    st.binary(min_size=6, max_size=6).map(Address),
    st.integers(0, 255),
    st.binary(max_size=MAX_DATA),
)


@given(frames, st.integers(0, 4))
def test_frame_round_trip(frame: Frame, preamble: int) -> None:
    raw = frame.to_bytes(preamble)
    assert len(raw) == preamble + frame.wire_size
    assert Frame.from_bytes(raw) == frame


@given(frames, st.integers(0, 200), st.integers(1, 255))
def test_any_damaged_byte_is_a_frame_error(frame: Frame, where: int, flip: int) -> None:
    raw = bytearray(frame.to_bytes(0))
    raw[where % len(raw)] ^= flip
    # A damaged length byte may still describe a frame that ends elsewhere: never accepted
    # as the original, and never anything but FrameError.
    try:
        got = Frame.from_bytes(bytes(raw))
    except FrameError as exc:
        assert exc.raw == bytes(raw)
    else:
        assert got != frame


@given(st.binary(max_size=300))
def test_garbage_never_raises_anything_but_frame_error(raw: bytes) -> None:
    try:
        frame = Frame.from_bytes(raw)
    except FrameError:
        return
    assert frame.to_bytes(0) == raw.lstrip(b"\xfe")


@given(frames)
def test_any_frame_decodes_as_a_message_or_a_payload_error(frame: Frame) -> None:
    for decode in (decode_reply, decode_request):
        try:
            message = decode(frame)
        except PayloadError as exc:
            assert isinstance(exc, DecodeError)
        else:
            assert message.to_frame() == frame or isinstance(message, ErrorReply)


def test_oversized_data_is_refused_when_built_and_when_read() -> None:
    with pytest.raises(EncodeError):
        Frame(METER, 0x91, bytes(MAX_DATA + 1))
    raw = bytearray(Frame(METER, 0x91, bytes(MAX_DATA)).to_bytes(0))
    raw[9] = MAX_DATA + 1
    with pytest.raises(FrameError, match="above 200"):
        Frame.from_bytes(bytes(raw))


# ---------------------------------------------------------------------- deframer


no_start = st.binary(max_size=40).map(lambda b: b.replace(b"\x68", b"\x00"))


@given(st.lists(st.tuples(no_start, frames, st.integers(0, 4)), max_size=5), st.data())
def test_deframer_finds_every_frame_behind_noise_however_split(
    parts: list[tuple[bytes, Frame, int]], data: st.DataObject
) -> None:
    stream = b"".join(noise + f.to_bytes(pre) for noise, f, pre in parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    deframer = Deframer()
    got: list[Frame] = []
    for a, b in itertools.pairwise([0, *cuts, len(stream)]):
        got += deframer.feed(stream[a:b])
    assert got == [f for _, f, _ in parts]
    assert deframer.buffered == 0 or deframer.missing() is not None


@given(st.lists(st.binary(max_size=64), max_size=10))
def test_deframer_never_raises_on_garbage(chunks: list[bytes]) -> None:
    deframer = Deframer()
    for chunk in chunks:
        for frame in deframer.feed(chunk):
            assert isinstance(frame, Frame)
    assert deframer.buffered <= sum(len(c) for c in chunks)


def test_deframer_gives_up_a_false_start_when_a_whole_frame_follows() -> None:
    # A stray 68H whose "length" would swallow the real frame behind it.
    good = ReadRequest(METER, 0x00010000).to_frame()
    stream = bytes.fromhex("68 11 22 33 44 55 66 68 11 C8") + good.to_bytes(4)
    deframer = Deframer()
    assert deframer.feed(stream) == [good]
    assert deframer.discarded == 10


def test_deframer_counts_noise_but_not_wake_up_bytes() -> None:
    deframer = Deframer()
    good = ReadRequest(METER, 0x00010000).to_frame()
    assert deframer.feed_sized(b"\xfe\xfe\x00\x01" + good.to_bytes(4)) == [(good, 20)]
    assert deframer.discarded == 2
    assert deframer.feed_sized(b"\xfe\xfe") == []
    assert deframer.feed_sized(good.to_bytes(2)) == [(good, 20)]
    raw = good.to_bytes(0)  # 16 bytes
    assert deframer.feed(raw[:9]) == []
    assert deframer.missing() == 3  # at least the rest of the header
    assert deframer.feed(raw[9:10]) == []
    assert deframer.missing() == 6  # the length byte says how much
    assert deframer.reset() == 10
    assert deframer.buffered == 0


# ---------------------------------------------------------------------- messages


addresses = st.binary(min_size=6, max_size=6).map(Address)
dis = st.integers(0, 0xFFFFFFFF)
times = st.builds(
    MeterTime,
    st.integers(2000, 2099),
    st.integers(1, 12),
    st.integers(1, 28),
    st.integers(0, 23),
    st.integers(0, 59),
    st.integers(0, 59),
)
passwords = st.builds(Password, st.integers(0, 9), st.binary(min_size=3, max_size=3))
operators = st.binary(min_size=4, max_size=4).map(OperatorCode)
messages = st.one_of(
    st.builds(ReadRequest, addresses, dis),
    st.builds(ReadFollowUpRequest, addresses, dis, st.integers(0, 255)),
    st.builds(ReadAddressRequest, addresses),
    st.builds(WriteRequest, addresses, dis, passwords, operators, st.binary(max_size=38)),
    st.builds(BroadcastTime, times),
    st.builds(
        ControlRequest, addresses, passwords, operators, st.sampled_from(ControlCommand), times
    ),
    st.builds(ReadReply, addresses, dis, st.binary(max_size=196), st.booleans()),
    st.builds(
        ReadFollowUpReply,
        addresses,
        dis,
        st.binary(max_size=195),
        st.integers(0, 255),
        st.booleans(),
    ),
    st.builds(ReadAddressReply, addresses),
    st.builds(WriteReply, addresses),
    st.builds(ControlReply, addresses),
    st.builds(
        ErrorReply,
        addresses,
        st.sampled_from(list(Function)),
        st.integers(0, 255).map(ErrorWord),
        st.binary(max_size=2),
    ),
)


@given(messages)
def test_every_message_round_trips(message: object) -> None:
    kind = type(message)
    raw = message.to_bytes()  # type: ignore[attr-defined]
    assert kind.from_bytes(raw) == message  # type: ignore[attr-defined]
    frame = Frame.from_bytes(raw)
    decoded = decode_reply(frame) if frame.is_reply else decode_request(frame)
    assert decoded == message


def test_control_request_layout() -> None:
    """Password, operator code, N1, N2 = 00, then the valid-until time seconds first."""
    request = ControlRequest(
        METER,
        Password.parse("02123456"),
        OperatorCode.parse("0000ABCD"),
        ControlCommand.TRIP,
        MeterTime(2026, 3, 4, 5, 6, 7),
    )
    assert request.to_frame().data == bytes.fromhex("02563412 CDAB0000 1A00 070605040326")
    assert str(request.password) == "02123456"
    assert "123456" not in repr(request.password)


def test_broadcast_time_goes_to_every_meter_seconds_first() -> None:
    frame = BroadcastTime(MeterTime(2026, 12, 31, 23, 59, 58)).to_frame()
    assert frame.address == BROADCAST
    assert frame.control == Function.BROADCAST_TIME
    assert frame.data == bytes.fromhex("585923311226")


def test_read_address_uses_the_wildcard_and_the_reply_names_the_meter() -> None:
    assert ReadAddressRequest().to_frame().address == WILDCARD
    reply = ReadAddressReply(Address.parse("201512340001"))
    assert reply.to_frame().data == bytes.fromhex("010034121520")
    with pytest.raises(PayloadError, match="disagree"):
        ReadAddressReply.from_frame(Frame(METER, 0x93, bytes(6)))


def test_error_reply_names_its_reasons() -> None:
    reply = decode_reply(Frame(METER, 0xDC, bytes((0x04,))))
    assert isinstance(reply, ErrorReply)
    assert reply.function == Function.CONTROL
    assert reply.reasons == ["password"]
    assert ErrorReply(METER, 0x11, ErrorWord(0)).reasons == ["unknown"]


def test_encrypted_control_is_a_payload_error_that_says_why() -> None:
    frame = Frame(METER, Function.CONTROL, bytes(4 + 4 + 24))
    with pytest.raises(PayloadError, match="security module"):
        decode_request(frame)


def test_replies_are_not_requests_and_requests_are_not_replies() -> None:
    with pytest.raises(PayloadError):
        decode_request(ReadReply(METER, 1, b"").to_frame())
    with pytest.raises(PayloadError):
        decode_reply(ReadRequest(METER, 1).to_frame())


# ---------------------------------------------------------------------- values


@given(st.integers(1, 8).map(lambda n: 2 * n), st.data())
def test_numbers_round_trip(digits: int, data: st.DataObject) -> None:
    decimals = data.draw(st.integers(0, digits))
    signed = data.draw(st.booleans())
    fmt = NumberFormat(digits, decimals, signed)
    scaled = data.draw(st.integers(-fmt.limit + 1 if signed else 0, fmt.limit - 1))
    raw = fmt.encode(scaled)
    assert len(raw) == fmt.size
    assert fmt.decode(raw) == scaled
    with pytest.raises(EncodeError):
        fmt.encode(fmt.limit)


@given(st.binary(min_size=1, max_size=4), st.booleans())
def test_number_decoding_accepts_bcd_only(raw: bytes, signed: bool) -> None:
    fmt = NumberFormat(2 * len(raw), 0, signed)
    try:
        value = fmt.decode(raw)
    except DecodeError as exc:
        assert exc.raw == raw
    else:
        assert fmt.encode(value) == raw or (value == 0 and raw[-1] == 0x80)


def test_signed_values_keep_the_sign_in_the_top_bit() -> None:
    power = NumberFormat.parse("XX.XXXX", signed=True)
    assert power.encode(-12345) == bytes.fromhex("452381")
    assert power.value(power.decode(bytes.fromhex("452381"))) == Decimal("-1.2345")
    assert NumberFormat.parse("XXX.X").size == 2
    with pytest.raises(ValueError, match="odd"):
        NumberFormat.parse("XX.X")


def test_digits_and_bits() -> None:
    assert bcd_digits("201512340001") == bytes.fromhex("010034121520")
    assert digits_of(bytes.fromhex("010034121520")) == "201512340001"
    assert DigitsFormat.parse("NNNNNNNNNNNN").encode("000000000042") == bytes.fromhex(
        "420000000000"
    )
    assert BitsFormat().decode(bytes.fromhex("5000")) == 0x0050
    with pytest.raises(DecodeError):
        digits_of(b"\x1a")


@given(times)
def test_meter_times_round_trip(when: MeterTime) -> None:
    assert MeterTime.from_bytes(when.to_bytes()) == when
    assert MeterTime.from_date_and_time(when.date_bytes(), when.time_bytes()) == when
    cst = timezone(timedelta(hours=8))
    assert MeterTime.from_datetime(when.to_datetime(cst)) == when


def test_meter_time_takes_the_wall_fields_of_the_zone_it_is_given() -> None:
    instant = datetime(2026, 1, 1, 20, 0, tzinfo=UTC)
    local = instant.astimezone(timezone(timedelta(hours=8)))
    assert MeterTime.from_datetime(local) == MeterTime(2026, 1, 2, 4, 0, 0)
    assert MeterTime(2026, 1, 4, 0, 0, 0).weekday == 0  # a Sunday


@given(st.binary(min_size=6, max_size=6))
def test_meter_time_decoding_refuses_impossible_dates(raw: bytes) -> None:
    try:
        when = MeterTime.from_bytes(raw)
    except DecodeError as exc:
        assert exc.raw == raw
    else:
        assert when.to_bytes() == raw


def test_addresses() -> None:
    assert Address.parse("000000000001").raw == bytes.fromhex("010000000000")
    assert str(Address.of_number(42)) == "000000000042"
    assert Address.parse("AAAAAA000001").digits == "AAAAAA000001"
    assert not WILDCARD.is_bcd
    assert parse_di("04000503") == 0x04000503
    for bad in ("12345", "00000000000A1", "A00000000001"):
        with pytest.raises(ValueError, match="address"):
            Address.parse(bad)
    with pytest.raises(ValueError, match="not a meter"):
        _ = WILDCARD.number
