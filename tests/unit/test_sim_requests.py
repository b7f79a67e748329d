"""The pure request handler answers any PDU with a well-formed reply or the right exception, serves third-party maps read only, and the fault table, fault plans and control requests reject bad input with typed errors."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meter_sim.control import ButtonRequest, FaultRequest, KeypadRequest, parse_request
from meter_sim.errors import ControlError, FaultPlanError
from meter_sim.faults import (
    NORMAL,
    FaultKind,
    FaultPlan,
    FaultSpec,
    FaultTable,
    load_fault_plan,
    parse_fault_plan,
)
from meter_sim.pdu import SimMeter, answer
from meter_sim.physics import MeterModel
from meter_sim.registers import MapLayout
from protocol.regmap import load_map

T0 = 1_767_225_600.0
PE1 = MapLayout(load_map("pe1"), 0)
IEM = MapLayout(load_map("iem3000"), 0)


def meter() -> SimMeter:
    return SimMeter(MeterModel(1, 0, T0))


@given(st.binary(max_size=260))
def test_any_pdu_gets_a_well_formed_reply(pdu: bytes) -> None:
    reply = answer(PE1, meter(), pdu, T0)
    assert reply
    if reply[0] & 0x80:
        assert len(reply) == 2
        assert reply[1] in (1, 2, 3)
        assert reply[0] & 0x7F == (pdu[0] & 0x7F if pdu else 0)
    else:
        assert reply[0] == pdu[0]


def test_third_party_maps_are_read_only() -> None:
    m = meter()
    read = answer(IEM, m, struct.pack(">BHH", 3, 3203, 4), T0)
    assert read[:2] == b"\x03\x08"
    assert int.from_bytes(read[2:], "big") == m.model.energy_import_wh
    assert answer(IEM, m, struct.pack(">BHH", 6, 3203, 0), T0) == b"\x86\x02"
    assert answer(IEM, m, struct.pack(">BHH", 4, 0, 1), T0) == b"\x84\x02"
    assert answer(IEM, m, struct.pack(">BHH", 5, 0, 0xFF00), T0) == b"\x85\x02"


def test_write_multiple_coils_moves_the_relay() -> None:
    m = meter()
    assert answer(PE1, m, bytes((15, 0, 0, 0, 1, 1, 0)), T0) == bytes((15, 0, 0, 0, 1))
    assert m.model.relay_closed is False
    assert answer(PE1, m, bytes((1, 0, 0, 0, 1)), T0) == bytes((1, 1, 0))


VALID_TOML = """
[[faults]]
unit = 3
kind = "timeout"
probability = 0.5

[[faults]]
unit = "all"
kind = "slow"
probability = 0.1
delay = 0.25
"""


def test_fault_plans_in_toml_and_json(tmp_path: Path) -> None:
    toml_path = tmp_path / "plan.toml"
    toml_path.write_text(VALID_TOML)
    plan = load_fault_plan(toml_path)
    assert plan.faults[0] == FaultSpec(unit=3, kind=FaultKind.TIMEOUT, probability=0.5)
    assert plan.faults[1].delay == 0.25
    json_path = tmp_path / "plan.json"
    json_path.write_text(plan.model_dump_json())
    assert load_fault_plan(json_path) == plan


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"faults": [{"unit": 1, "kind": "meltdown"}]}', "faults.0.kind"),
        ('{"faults": [{"unit": 1, "kind": "timeout", "probability": 2}]}', "probability"),
        ('{"faults": [{"unit": "some", "kind": "timeout"}]}', "faults.0.unit"),
        ('{"faults": [{"kind": "timeout"}]}', "unit"),
        ('{"faults": [], "extra": 1}', "extra"),
        ("{not json", "not valid JSON"),
    ],
)
def test_malformed_fault_plans_say_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(FaultPlanError, match=problem) as info:
        parse_fault_plan(text, "plan.json", toml=False)
    assert info.value.source == "plan.json"


def test_an_unreadable_fault_plan_is_a_fault_plan_error(tmp_path: Path) -> None:
    with pytest.raises(FaultPlanError, match="cannot read"):
        load_fault_plan(tmp_path / "missing.toml")


@given(st.text(max_size=200), st.booleans())
def test_fault_plan_parser_on_arbitrary_text(text: str, toml: bool) -> None:
    try:
        assert isinstance(parse_fault_plan(text, "x", toml=toml), FaultPlan)
    except FaultPlanError as exc:
        assert exc.source == "x"


def test_fault_table_rejects_unknown_meters_and_clears_on_probability_zero() -> None:
    table = FaultTable(1, range(1, 4))
    with pytest.raises(ControlError):
        table.set(FaultSpec(unit=9, kind=FaultKind.TIMEOUT))
    table.set(FaultSpec(unit=2, kind=FaultKind.TIMEOUT))
    assert table.decide(2, T0, is_write=False).silent
    table.set(FaultSpec(unit=2, kind=FaultKind.TIMEOUT, probability=0))
    assert table.decide(2, T0, is_write=False) is NORMAL
    assert not table


def test_relay_stuck_only_affects_writes() -> None:
    table = FaultTable(1, range(1, 2))
    table.set(FaultSpec(unit=1, kind=FaultKind.RELAY_STUCK))
    assert table.decide(1, T0, is_write=False).relay_actuates
    assert not table.decide(1, T0, is_write=True).relay_actuates


def test_control_requests_parse_and_reject() -> None:
    assert parse_request('{"cmd": "button", "unit": 3}') == ButtonRequest(cmd="button", unit=3)
    req = parse_request('{"cmd": "keypad", "unit": 3, "digits": "1"}')
    assert isinstance(req, KeypadRequest)
    fault = parse_request('{"cmd": "fault", "unit": "all", "kind": "clear"}')
    assert isinstance(fault, FaultRequest)
    with pytest.raises(ControlError, match="kind"):
        parse_request('{"cmd": "fault", "unit": 1, "kind": "meltdown"}')
    with pytest.raises(ControlError):
        parse_request('{"cmd": "reboot", "unit": 1}')


@given(st.text(max_size=200))
def test_control_parser_on_arbitrary_text(text: str) -> None:
    try:
        parse_request(text)
    except ControlError as exc:
        assert str(exc)
