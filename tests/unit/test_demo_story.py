"""The demo's pure parts: its live view reads the published contract (and ignores anything else without changing), its script types the top-up after a disconnection and the replay after the reconnection, and its site plan and config are valid."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import TcpBus, parse_config, to_toml
from prepaid_demo.arguments import _meters, _positive_float, _speed, build_parser
from prepaid_demo.story import PAUSE_S, Director, Phase
from prepaid_demo.view import ViewModel, money
from prepaid_demo.world import (
    LOW_CREDIT_UNITS,
    PROTECTED_UNIT,
    gateway_config,
    keypad_token,
    plan_site,
)
from protocol.event_kinds import EventKind
from protocol.messages import (
    Balance,
    Body,
    JsonValue,
    Reading,
    encode_body,
    encode_message,
    event_body,
    utc_stamp,
)
from protocol.mqtt import StatusMessage, dump

T0 = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)
ROOT = "prepaid/v1/gw-demo"


_SEQ = itertools.count(1)


def _seq() -> int:
    return next(_SEQ)


def phase(director: Director) -> Phase:
    """The script's phase, read afresh (steps change it behind the type checker's back)."""
    return director.phase


def published(meter: str, at: datetime, body: Body) -> tuple[str, bytes]:
    """A meter message as the gateway publishes it: topic and payload."""
    kind = body["kind"]
    payload = encode_message(
        kind, encode_body(body), gateway="gw-demo", meter=meter, seq=_seq(), ts=utc_stamp(at)
    )
    return f"{ROOT}/meters/{meter}/{kind}", payload


def balance(
    meter: str, amount: int, relay: Literal["closed", "open", "armed"], state: str = "normal"
) -> tuple[str, bytes]:
    body: Balance = {
        "kind": "balance",
        "balance": amount,
        "currency": "KES",
        "credit_state": state,
        "debt": 0,
        "relay": relay,
        "forecast_exhaustion": None,
    }
    return published(meter, T0, body)


def event(meter: str, name: str, reason: str, **details: JsonValue) -> tuple[str, bytes]:
    return published(
        meter, T0 + timedelta(minutes=5), event_body(EventKind(name), reason, **details)
    )


def test_messages_fill_rows_and_tell_the_story() -> None:
    model = ViewModel("gw-demo")
    status = StatusMessage(gateway="gw-demo", state="online", ts=T0)
    assert model.apply(f"{ROOT}/status", dump(status)) == ["gateway gw-demo is online"]
    assert model.apply(f"{ROOT}/status", dump(status)) == []  # health updates say nothing new
    reading: Reading = {
        "kind": "reading",
        "energy_import_wh": 10,
        "power_w": 9000,
        "voltage_v": None,
        "relay_closed": True,
        "charged": 3,
    }
    assert model.apply(*published("PE1-000002", T0, reading)) == []
    assert model.apply(*balance("PE1-000002", -1250, "open", "disconnected")) == []
    lines = model.apply(
        *event("PE1-000002", "credit_state_changed", "balance_low_credit", to="low_credit")
    )
    assert lines == ["PE1-000002 low credit warning"]
    assert model.apply(*event("PE1-000002", "relay_opened", "credit_exhausted")) == [
        "PE1-000002 DISCONNECTED (credit_exhausted)"
    ]
    accepted = event("PE1-000002", "token_accepted", "accepted", channel="keypad", credited=50000)
    assert model.apply(*accepted) == ["PE1-000002 keypad top-up accepted: +500.00 KES"]
    assert model.apply(*event("PE1-000002", "token_rejected", "replayed")) == [
        "PE1-000002 replay rejected (replayed)"
    ]
    row = model.rows["PE1-000002"]
    assert (row.balance, row.relay, row.power_w) == (-1250, "open", 9000)
    assert model.replays_rejected == {"PE1-000002"}
    assert model.latest_ts == T0 + timedelta(minutes=5)


@given(payload=st.binary(max_size=300), kind=st.sampled_from(["status", "balance", "event"]))
def test_a_payload_off_the_contract_changes_nothing(payload: bytes, kind: str) -> None:
    model = ViewModel("gw-demo")
    topic = f"{ROOT}/status" if kind == "status" else f"{ROOT}/meters/PE1-000001/{kind}"
    lines = model.apply(topic, payload)
    assert lines == [f"message on {topic} breaks the contract: ignored"]
    assert model.rows == {}
    assert model.messages == 0


@given(
    payload=st.dictionaries(
        st.sampled_from(["v", "gateway", "meter", "seq", "ts", "kind", "balance", "relay"]),
        st.one_of(st.none(), st.integers(), st.text(max_size=20)),
    ).map(lambda d: json.dumps(d).encode())
)
def test_json_that_is_almost_a_balance_is_refused(payload: bytes) -> None:
    model = ViewModel("gw-demo")
    lines = model.apply(f"{ROOT}/meters/PE1-000001/balance", payload)
    assert len(lines) == 1
    assert "breaks the contract" in lines[0]
    assert model.rows == {}


def test_command_topics_are_not_the_views_business() -> None:
    model = ViewModel("gw-demo")
    assert model.apply(f"{ROOT}/meters/PE1-000001/cmd", b"{}") == []
    assert model.messages == 0


def test_money_formats_minor_units() -> None:
    assert money(-1250) == "-12.50 KES"
    assert money(123456789) == "1,234,567.89 KES"
    assert money(None) == "-"


def test_director_tops_up_after_the_cut_and_replays_after_the_reconnection() -> None:
    model = ViewModel("gw-demo")
    director = Director((2, 7))
    assert director.step(model, 0.0) is None
    model.apply(*balance("PE1-000007", -1100, "open", "disconnected"))
    assert director.step(model, 1.0) is None
    assert director.unit == 7
    assert director.step(model, 1.0 + PAUSE_S / 2) is None
    top_up = director.step(model, 1.0 + PAUSE_S)
    assert top_up is not None
    assert top_up.unit == 7
    assert top_up.digits == keypad_token(7, counter=1)
    assert "PE1-000007" in top_up.line
    assert phase(director) is Phase.WAIT_RECONNECT
    assert director.step(model, 10.0) is None  # still open: no replay yet
    model.apply(*balance("PE1-000007", 48_900, "closed", "normal"))
    assert director.step(model, 10.0) is None
    replay = director.step(model, 10.0 + PAUSE_S)
    assert replay is not None
    assert replay.digits == top_up.digits
    assert "replay" in replay.line
    assert director.step(model, 20.0) is None
    assert phase(director) is Phase.WAIT_REPLAY_REJECTED
    model.apply(*event("PE1-000007", "token_rejected", "replayed"))
    director.step(model, 21.0)
    assert phase(director) is Phase.DONE


def test_site_plan_has_a_protected_meter_and_low_credit_meters() -> None:
    classes = {u: ("shop" if u % 3 == 0 else "residential") for u in range(1, 21)}
    plans = plan_site(classes, seed=1)
    assert [p.unit for p in plans] == list(range(1, 21))
    assert [p.unit for p in plans if p.protected] == [PROTECTED_UNIT]
    assert tuple(p.unit for p in plans if p.role == "low credit") == LOW_CREDIT_UNITS
    assert plan_site(classes, seed=1) == plans
    assert plan_site(classes, seed=2) != plans
    assert all(p.customer_class == classes[p.unit] for p in plans)


def test_the_written_config_is_a_valid_gateway_config(tmp_path: Path) -> None:
    data = gateway_config(
        store=tmp_path / "gateway.db",
        modbus=("127.0.0.1", 5020),
        broker=("127.0.0.1", 1883),
        mqtt_protocol="3.1.1",
        speed=60.0,
        clock_start=T0,
    )
    config = parse_config(to_toml(data), "demo.toml", env={})
    assert config.simulation.clock_speed == 60.0
    assert config.simulation.clock_start == T0
    assert config.mqtt.protocol == "3.1.1"
    bus = config.buses[0]
    assert isinstance(bus, TcpBus)
    assert bus.port == 5020


@given(text=st.text(max_size=12))
def test_demo_flags_parse_or_say_why(text: str) -> None:
    for parse in (_meters, _positive_float, _speed):
        try:
            value = parse(text)
        except argparse.ArgumentTypeError as exc:
            assert repr(text) in str(exc)
        else:
            assert 0 < value < float("inf")
    with contextlib.suppress(argparse.ArgumentTypeError):
        assert 2 <= _meters(text) <= 247


def test_bad_flags_end_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["--meters", "1"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "2 to 247 meters" in err
