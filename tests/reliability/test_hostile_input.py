"""Hostile bytes and text never crash a parser: random Modbus replies (PDU, RTU, MBAP), keypad digits, online tokens and config files are parsed or refused with the parser's typed error, and none of them is accepted as credit."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import ConfigError, parse_config
from protocol.errors import DecodeError
from protocol.modbus import (
    ExceptionReplyError,
    Request,
    parse_mbap_header,
    parse_reply_pdu,
    parse_rtu_reply,
    read_coils,
    read_holding,
    read_input,
    write_coil,
    write_registers,
)
from protocol.tokens.keypad import verify_keypad
from protocol.tokens.keys import derive_meter_key
from protocol.tokens.online import load_public_key, verify_online
from protocol.tokens.replay import ReplayWindow
from protocol.tokens.results import Rejected
from tests.support.gateway_env import ONLINE_KEY, VENDING_KEY, b64, meter_id

pytestmark = pytest.mark.reliability

CASES = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
METER = meter_id(1)
KEY = derive_meter_key(VENDING_KEY, METER, 0)
PUBLIC = {"vend-1": load_public_key(b64(ONLINE_KEY.public_key().public_bytes_raw()))}
NOW = datetime(2026, 11, 28, tzinfo=UTC)

requests = st.sampled_from(
    [
        read_input(1, 0, 32),
        read_holding(7, 0, 6),
        read_coils(1, 0, 1),
        write_coil(3, 0, True),
        write_registers(1, 2, [0, 1500]),
        write_registers(1, 0, [42]),
    ]
)


@CASES
@given(requests, st.binary(max_size=300))
def test_random_reply_pdu_is_parsed_or_refused(request: Request, pdu: bytes) -> None:
    try:
        values = parse_reply_pdu(request, pdu)
    except (DecodeError, ExceptionReplyError):
        return
    assert all(0 <= v <= 0xFFFF for v in values)


@CASES
@given(requests, st.binary(max_size=300))
def test_random_rtu_frame_is_parsed_or_refused(request: Request, frame: bytes) -> None:
    try:
        parse_rtu_reply(request, frame)
    except (DecodeError, ExceptionReplyError):
        return


@CASES
@given(st.binary(max_size=12))
def test_random_mbap_header_is_parsed_or_refused(header: bytes) -> None:
    try:
        _tid, length, _unit = parse_mbap_header(header)
    except DecodeError:
        return
    assert 2 <= length <= 254


@CASES
@given(st.one_of(st.text(max_size=40), st.text(alphabet="0123456789 -", max_size=30)))
def test_random_keypad_entry_is_refused(digits: str) -> None:
    assert isinstance(verify_keypad(digits, METER, KEY, ReplayWindow.fresh(0)), Rejected)


@CASES
@given(st.one_of(st.binary(max_size=400), st.text(max_size=400)))
def test_random_online_token_is_refused(token: bytes | str) -> None:
    result = verify_online(token, METER, PUBLIC, ReplayWindow.fresh(0), NOW)
    assert isinstance(result, Rejected)


toml_scalars = st.one_of(
    st.integers(-(2**40), 2**40), st.booleans(), st.text(max_size=20), st.floats(allow_nan=False)
)


@CASES
@given(
    st.one_of(
        st.text(max_size=400),
        st.dictionaries(
            st.sampled_from(["gateway_id", "store", "buses", "mqtt", "polling", "x"]),
            toml_scalars,
        ).map(lambda d: "\n".join(f"{k} = {_toml(v)}" for k, v in d.items())),
    )
)
def test_random_config_text_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_config(text, "fuzz.toml", env={})


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)
