"""A simulated DL/T 645 meter answers from the Modbus meters' physics and obeys remote control as a State Grid remote cost-control meter does: trip unless protected, close allowed only with the button, direct close, alarm, its password and its clock, follow-up frames, broadcast time; requests for other meters get no reply."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meter_sim.dlt645_meter import DEFAULT_PASSWORD, Dlt645Meter, answer, point_bytes
from meter_sim.physics import MeterModel, Tamper
from protocol.dlt645.bcd import NumberFormat
from protocol.dlt645.clock import MeterTime
from protocol.dlt645.credentials import OperatorCode, Password
from protocol.dlt645.frame import WILDCARD, Address, Frame
from protocol.dlt645.messages import (
    BroadcastTime,
    ControlReply,
    ControlRequest,
    ErrorReply,
    ReadAddressReply,
    ReadAddressRequest,
    ReadFollowUpReply,
    ReadFollowUpRequest,
    ReadReply,
    ReadRequest,
    Reply,
    WriteReply,
    WriteRequest,
    decode_reply,
)
from protocol.dlt645.meter_map import load_dlt645_map
from protocol.dlt645.terms import ControlCommand, ErrorWord

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
SINGLE = load_dlt645_map("dlt645_single_phase")
THREE = load_dlt645_map("dlt645_three_phase")
OPERATOR = OperatorCode.parse("00000001")
LATER = MeterTime(2026, 1, 1, 0, 10, 0)


def _meter(n: int = 1) -> Dlt645Meter:
    return Dlt645Meter(MeterModel(n, 0, NOW), Address.of_number(n))


def _ask(meter: Dlt645Meter, frame: Frame, now: float = NOW, **kw: object) -> Reply:
    replies = answer(SINGLE, [meter], frame, now, **kw)  # type: ignore[arg-type]
    assert len(replies) == 1
    return decode_reply(replies[0][1])


def _control(
    meter: Dlt645Meter,
    command: ControlCommand,
    *,
    password: Password = DEFAULT_PASSWORD,
    valid_until: MeterTime = LATER,
    now: float = NOW,
    relay_actuates: bool = True,
) -> Reply:
    request = ControlRequest(meter.address, password, OPERATOR, command, valid_until)
    return _ask(meter, request.to_frame(), now, relay_actuates=relay_actuates)


def _status(meter: Dlt645Meter) -> frozenset[str]:
    reply = _ask(meter, ReadRequest(meter.address, 0x04000503).to_frame())
    assert isinstance(reply, ReadReply)
    point = SINGLE.point("status")
    return point.flags(point.word(reply.payload))


def test_readings_come_from_the_physics() -> None:
    meter = _meter()
    meter.model.set_load(3600, NOW)
    later = NOW + 600
    reply = _ask(meter, ReadRequest(meter.address, 0x00010000).to_frame(), later)
    assert isinstance(reply, ReadReply)
    energy = SINGLE.point("energy_import").base_value(reply.payload)
    assert meter.model.energy_import_wh - 10 < energy <= meter.model.energy_import_wh + 5
    inst = meter.model.instant()
    power = _ask(meter, ReadRequest(meter.address, 0x02030000).to_frame(), later)
    assert isinstance(power, ReadReply)
    assert SINGLE.point("active_power").base_value(power.payload) == inst.power_w == 3600
    volts = _ask(meter, ReadRequest(meter.address, 0x02010100).to_frame(), later)
    assert isinstance(volts, ReadReply)
    assert SINGLE.point("voltage").base_value(volts.payload) * 10 == inst.voltage_dv


def test_every_point_of_both_models_is_served_in_its_format() -> None:
    for model_map in (SINGLE, THREE):
        meter = _meter()
        for point in model_map.points:
            assert len(point_bytes(model_map, point, meter, NOW)) == point.size


def test_reverse_tamper_shows_negative_power_and_status_word_1() -> None:
    meter = _meter()
    meter.model.set_load(2000, NOW)
    meter.model.set_tamper(Tamper.REVERSE, True, NOW)
    power = _ask(meter, ReadRequest(meter.address, 0x02030000).to_frame())
    assert isinstance(power, ReadReply)
    assert SINGLE.point("active_power").base_value(power.payload) == -2000
    word = _ask(meter, ReadRequest(meter.address, 0x04000501).to_frame())
    assert isinstance(word, ReadReply)
    assert "reverse_energy" in SINGLE.point("status_word_1").flags(
        int.from_bytes(word.payload, "little")
    )


def test_trip_then_close_allowed_waits_for_the_button() -> None:
    meter = _meter()
    assert isinstance(_control(meter, ControlCommand.TRIP), ControlReply)
    assert not meter.model.relay_closed
    assert _status(meter) >= {"relay_open", "relay_command_open"}
    assert isinstance(_control(meter, ControlCommand.ALLOW_CLOSE), ControlReply)
    assert not meter.model.relay_closed  # allowed, not closed
    assert _status(meter) == {"relay_open"}
    meter.press_button(NOW + 1)
    assert meter.model.relay_closed
    assert _status(meter) == frozenset()


def test_the_button_does_nothing_while_tripped() -> None:
    meter = _meter()
    _control(meter, ControlCommand.TRIP)
    meter.press_button(NOW + 1)
    assert not meter.model.relay_closed


def test_direct_close_closes_at_once() -> None:
    meter = _meter()
    _control(meter, ControlCommand.TRIP)
    assert isinstance(_control(meter, ControlCommand.CLOSE), ControlReply)
    assert meter.model.relay_closed
    assert meter.commands == ["trip", "close"]


def test_protected_supply_refuses_every_trip() -> None:
    meter = _meter()
    _control(meter, ControlCommand.PROTECT)
    assert "protected" in _status(meter)
    refused = _control(meter, ControlCommand.TRIP)
    assert isinstance(refused, ErrorReply)
    assert refused.error == ErrorWord.OTHER
    assert meter.model.relay_closed
    _control(meter, ControlCommand.PROTECT_OFF)
    assert isinstance(_control(meter, ControlCommand.TRIP), ControlReply)
    assert not meter.model.relay_closed


def test_alarm_on_and_off() -> None:
    meter = _meter()
    _control(meter, ControlCommand.ALARM)
    assert "alarm" in _status(meter)
    _control(meter, ControlCommand.ALARM_OFF)
    assert "alarm" not in _status(meter)


def test_wrong_password_and_expired_commands_change_nothing() -> None:
    meter = _meter()
    wrong = _control(meter, ControlCommand.TRIP, password=Password.parse("02999999"))
    assert isinstance(wrong, ErrorReply)
    assert wrong.error == ErrorWord.PASSWORD
    expired = _control(meter, ControlCommand.TRIP, valid_until=MeterTime(2025, 12, 31, 23, 59, 59))
    assert isinstance(expired, ErrorReply)
    assert meter.model.relay_closed
    assert meter.commands == []


def test_a_stuck_relay_acknowledges_and_stays() -> None:
    meter = _meter()
    assert isinstance(_control(meter, ControlCommand.TRIP, relay_actuates=False), ControlReply)
    assert meter.model.relay_closed
    assert _status(meter) == {"relay_command_open"}  # the mismatch a gateway sees


def test_unknown_identifier_is_no_data() -> None:
    reply = _ask(_meter(), ReadRequest(Address.of_number(1), 0x0001FF00).to_frame())
    assert isinstance(reply, ErrorReply)
    assert reply.error == ErrorWord.NO_DATA


def test_long_replies_go_out_in_follow_up_frames() -> None:
    meter = _meter()
    whole = point_bytes(SINGLE, SINGLE.point("meter_number"), meter, NOW)
    first = _ask(meter, ReadRequest(meter.address, 0x04000402).to_frame(), max_data=6)
    assert isinstance(first, ReadReply)
    assert first.follows
    got, seq, follows = first.payload, 0, True
    while follows:
        seq += 1
        more = _ask(meter, ReadFollowUpRequest(meter.address, 0x04000402, seq).to_frame())
        assert isinstance(more, ReadFollowUpReply)
        assert more.seq == seq
        got += more.payload
        follows = more.follows
    assert got == whole
    assert seq == 4  # 2 + 1 + 1 + 1 + 1 bytes
    extra = _ask(meter, ReadFollowUpRequest(meter.address, 0x04000402, 5).to_frame())
    assert isinstance(extra, ErrorReply)


def test_broadcast_time_sets_every_clock_without_a_reply() -> None:
    meters = [_meter(1), _meter(2)]
    when = MeterTime(2026, 6, 1, 8, 0, 0)
    assert answer(SINGLE, meters, BroadcastTime(when).to_frame(), NOW) == []
    assert all(m.wall_time(NOW) == when for m in meters)
    assert meters[0].wall_time(NOW + 61) == MeterTime(2026, 6, 1, 8, 1, 1)


def test_writing_the_time_point_sets_the_clock() -> None:
    meter = _meter()
    new = MeterTime(2026, 1, 1, 12, 30, 0)
    request = WriteRequest(meter.address, 0x04000102, DEFAULT_PASSWORD, OPERATOR, new.time_bytes())
    assert isinstance(_ask(meter, request.to_frame()), WriteReply)
    assert meter.wall_time(NOW) == new
    bad = WriteRequest(meter.address, 0x04000102, DEFAULT_PASSWORD, OPERATOR, b"\x99\x99\x99")
    assert isinstance(_ask(meter, bad.to_frame()), ErrorReply)
    other = WriteRequest(meter.address, 0x00010000, DEFAULT_PASSWORD, OPERATOR, bytes(4))
    assert isinstance(_ask(meter, other.to_frame()), ErrorReply)


def test_addressing() -> None:
    meters = [_meter(1), _meter(2)]
    assert (
        answer(SINGLE, meters, ReadRequest(Address.of_number(3), 0x00010000).to_frame(), NOW) == []
    )
    both = answer(SINGLE, meters, ReadAddressRequest(WILDCARD).to_frame(), NOW)
    assert [decode_reply(f) for _, f in both] == [ReadAddressReply(m.address) for m in meters]
    short = Address.parse("AAAAAAAAAA02")  # abbreviated address: the low digits
    (hit,) = answer(SINGLE, meters, ReadRequest(short, 0x00010000).to_frame(), NOW)
    assert hit[1].address == meters[1].address
    overheard = ReadReply(meters[0].address, 0x00010000, bytes(4)).to_frame()
    assert answer(SINGLE, meters, overheard, NOW) == []


def test_a_malformed_request_gets_an_error_reply() -> None:
    meter = _meter()
    reply = _ask(meter, Frame(meter.address, 0x11, b"\x00"))
    assert isinstance(reply, ErrorReply)
    assert reply.function == 0x11


@pytest.mark.parametrize("scaled", [0, 1, 99999999])
def test_energy_rolls_over_like_a_real_register(scaled: int) -> None:
    meter = _meter()
    meter.model.energy_import_wh = 10 * scaled + 1_000_000_000
    data = point_bytes(SINGLE, SINGLE.point("energy_import"), meter, NOW)
    fmt = SINGLE.point("energy_import").format
    assert isinstance(fmt, NumberFormat)
    assert fmt.decode(data) == (scaled + 100_000_000) % fmt.limit


def test_state_reports_the_645_side() -> None:
    meter = _meter()
    _control(meter, ControlCommand.TRIP)
    state = meter.state(NOW)
    assert state["address"] == "000000000001"
    assert state["relay_command_open"] is True
    assert state["clock"] == datetime.fromtimestamp(NOW, UTC).strftime("%Y-%m-%dT%H:%M:%S")


@given(
    st.sampled_from(
        [b"\x01\x00\x00\x00\x00\x00", b"\xaa" * 6, b"\x99" * 6, b"\x02\x00\x00\x00\x00\x00"]
    ),
    st.integers(0, 255),
    st.binary(max_size=40),
)
def test_any_frame_gets_a_decodable_reply_or_none(
    address: bytes, control: int, data: bytes
) -> None:
    meter = _meter()
    for _, reply in answer(SINGLE, [meter], Frame(Address(address), control, data), NOW):
        assert decode_reply(reply).address == meter.address
