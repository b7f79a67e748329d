"""The reference headend validates messages against the published schemas and finds every gap and duplicate in a meter's sequence."""

from __future__ import annotations

import json

from examples.headend import Headend


def _reading(seq: int, meter: str = "m1", **extra: object) -> bytes:
    body = {
        "v": 1,
        "gateway": "gw",
        "meter": meter,
        "seq": seq,
        "ts": "2026-11-28T12:00:00.000Z",
        "kind": "reading",
        "energy_import_wh": 100 * seq,
        "power_w": 5,
        "voltage_v": 230.0,
        "relay_closed": True,
        "charged": 3,
    }
    return json.dumps(body | extra).encode()


def test_in_order_messages_are_clean() -> None:
    h = Headend()
    for seq in range(1, 6):
        h.handle("prepaid/v1/gw/meters/m1/reading", _reading(seq))
    gw = h.gateways["gw"]
    assert (gw.readings, gw.violations, gw.gaps_seen, gw.missing, gw.duplicates) == (5, 0, 0, 0, 0)


def test_gap_is_seen_requested_and_filled_by_resend() -> None:
    h = Headend()
    for seq in (1, 2, 5, 6):
        h.handle("prepaid/v1/gw/meters/m1/reading", _reading(seq))
    gw = h.gateways["gw"]
    assert gw.gaps_seen == 1
    assert gw.missing == 2
    assert h.gap_requests == [("gw", "m1", 3)]
    for seq in (3, 4, 5):  # the resend starts at 3 and repeats what was already there
        h.handle("prepaid/v1/gw/meters/m1/reading", _reading(seq))
    assert gw.missing == 0
    assert gw.duplicates == 1


def test_schema_violations_are_counted() -> None:
    h = Headend()
    h.handle("prepaid/v1/gw/meters/m1/reading", b"{")
    h.handle("prepaid/v1/gw/meters/m1/reading", _reading(1, energy_import_wh=-5))
    h.handle("prepaid/v1/gw/meters/m1/reading", _reading(2, meter="m2"))
    h.handle("prepaid/v1/gw/meters/m1/reading", _reading(3, surprise=True))
    assert h.gateways["gw"].violations == 4
    assert h.gateways["gw"].readings == 0
