"""The simulator's command-line parsers (HOST:PORT, --fault, ctl arguments) accept the documented shapes and turn anything else into a clear argparse or CLI error."""

from __future__ import annotations

import argparse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meter_sim.cli_args import CliError, build_parser, ctl_payload, fault_flag, host_port
from meter_sim.faults import FaultKind, FaultSpec


def test_host_port_shapes() -> None:
    assert host_port("127.0.0.1:5020") == ("127.0.0.1", 5020)
    assert host_port("[::1]:0") == ("::1", 0)
    for bad in ("5020", "127.0.0.1:", ":5020", "127.0.0.1:70000", "host:port"):
        with pytest.raises(argparse.ArgumentTypeError):
            host_port(bad)


@given(st.text(max_size=40))
def test_host_port_on_arbitrary_text(text: str) -> None:
    try:
        host, port = host_port(text)
    except argparse.ArgumentTypeError as exc:
        assert text in str(exc) or repr(text) in str(exc)
    else:
        assert host
        assert 0 <= port <= 65535


def test_fault_flag_shapes() -> None:
    assert fault_flag("3:timeout:0.5") == FaultSpec(unit=3, kind=FaultKind.TIMEOUT, probability=0.5)
    assert fault_flag("all:exception:0.1:code=4").code == 4
    assert fault_flag("7:slow:1:delay=0.3").delay == 0.3
    assert fault_flag("2:relay_stuck").probability == 1.0
    for bad in ("3", "3:meltdown", "x:timeout", "3:timeout:2", "3:slow:1:delay", "3:slow:1:x=1"):
        with pytest.raises(argparse.ArgumentTypeError):
            fault_flag(bad)


@given(st.text(max_size=60))
def test_fault_flag_on_arbitrary_text(text: str) -> None:
    try:
        assert isinstance(fault_flag(text), FaultSpec)
    except argparse.ArgumentTypeError as exc:
        assert str(exc)


def test_ctl_command_shapes_become_control_requests() -> None:
    parser = build_parser()

    def payload(*argv: str) -> dict[str, object]:
        return ctl_payload(parser.parse_args(["ctl", *argv]))

    assert payload("keypad", "3", "12345678901234567890") == {
        "cmd": "keypad",
        "unit": 3,
        "digits": "12345678901234567890",
    }
    # As a token is printed (groups of four), as separate words or quoted.
    grouped = {"cmd": "keypad", "unit": 3, "digits": "12345678901234567890"}
    assert payload("keypad", "3", "1234", "5678", "9012", "3456", "7890") == grouped
    assert payload("keypad", "3", "1234 5678 9012 3456 7890") == grouped
    assert payload("button", "3") == {"cmd": "button", "unit": 3}
    assert payload("tamper", "3", "bypass", "on") == {
        "cmd": "tamper",
        "unit": 3,
        "tamper": "bypass",
        "on": True,
    }
    assert payload("load", "3", "2500") == {"cmd": "load", "unit": 3, "watts": 2500}
    assert payload("load", "3", "auto") == {"cmd": "load", "unit": 3, "watts": None}
    assert payload("fault", "3", "timeout", "0.5") == {
        "cmd": "fault",
        "unit": 3,
        "kind": "timeout",
        "probability": 0.5,
        "options": {},
    }
    assert payload("fault", "all", "slow", "1", "delay=0.2")["options"] == {"delay": 0.2}
    assert payload("state", "3") == {"cmd": "state", "unit": 3}
    with pytest.raises(CliError):
        payload("fault", "3", "slow", "1", "delay")
    with pytest.raises(CliError):
        payload("fault", "three", "timeout")
