"""A scan's time-left estimate comes from the line's arithmetic for the units left (an absent unit's timeout, wire, silence and guard time), so the first meters' fast answers cannot make it small; the field guide's scan figures are the same arithmetic."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.modbus_port import RtuPort, TcpPort
from protocol.modbus import rtu_char_time, rtu_silence
from provisioning.scan import Responder, ScanTally, silent_unit_seconds

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "field-guide.md"


def rs485(timeout: float = 0.3) -> RtuPort:
    return RtuPort("rs485-1", "/dev/null", baud=9600, timeout=timeout)


def test_an_absent_unit_costs_its_timeout_wire_silence_and_guard_time() -> None:
    port = rs485()
    char = rtu_char_time(9600)
    # request: address, function, start, count, CRC (8); reply: address, PDU (4), CRC; +1 gap
    wire = (8 + 1 + 4 + 2) * char
    expected = rtu_silence(9600) + wire + 0.3 + max(0.05, 260 * char)
    assert abs(silent_unit_seconds(port) - expected) < 1e-9
    assert silent_unit_seconds(TcpPort("tcp-1", "127.0.0.1", 502, timeout=0.3)) == 0.3


def test_the_estimate_starts_honest_and_fast_answers_do_not_shrink_it() -> None:
    """20 meters at units 1..20 answer in 30 ms each; 227 absent units follow."""
    silent = silent_unit_seconds(rs485())
    tally = ScanTally(247, silent)
    assert abs(tally.seconds_left() - 247 * silent) < 1e-6  # before the first probe
    for unit in range(1, 21):
        tally.record(Responder(unit, "pe1", "map_version 1"), 0.03)
        assert tally.seconds_left() >= (247 - unit) * silent
    assert round(tally.seconds_left()) == round(227 * silent)  # about 141 s, as a run takes


def test_a_timed_absent_unit_replaces_the_arithmetic() -> None:
    """Over a Modbus TCP device server an absent unit is refused at once: the estimate
    follows what the line really costs once it has timed one."""
    tally = ScanTally(247, 0.3)
    tally.record(None, 0.002)
    assert tally.seconds_left() < 1.0
    assert "1/247 units, 0 found, up to ~0 s left" in tally.progress_line()


def test_units_slower_than_an_absent_one_raise_the_estimate() -> None:
    tally = ScanTally(10, 0.5)
    tally.record(Responder(1, "unknown", "answers, but no shipped map fits"), 4.0)
    assert tally.seconds_left() == 9 * 4.0


def test_the_field_guide_scan_figures_are_the_line_arithmetic() -> None:
    text = " ".join(GUIDE.read_text(encoding="utf-8").split())
    default, short = silent_unit_seconds(rs485()), silent_unit_seconds(rs485(0.1))
    absent = 247 - 20
    claim = re.search(
        r"([0-9.]+) s at 9,600 baud, so 1\.\.247 with 20 meters takes about (\d+) s "
        r"\(about (\d+) s with `--timeout 0\.1`\)",
        text,
    )
    assert claim is not None, "the guide's scan time sentence changed shape"
    assert claim.groups() == (f"{default:.2f}", f"{absent * default:.0f}", f"{absent * short:.0f}")
