"""Meter messages are encoded once: ``encode_message`` writes exactly the envelope followed by the body (any stored body, any time), every message the core builds is valid against docs/schemas and reads back, its keys come in the order the definitions give, and the examples of docs/mqtt.md are what it writes."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import get_type_hints

from hypothesis import given
from hypothesis import strategies as st

from examples.headend import load_validators
from gateway.core.commands import Publish
from gateway.core.events import (
    CommunicationLost,
    Event,
    ReadingReceived,
    RemoteCommand,
    RemoteKind,
    TopUpAccepted,
)
from gateway.core.meter_state import enrol
from gateway.core.settings import MeterSettings
from gateway.core.step import step
from gateway.core.tariff import FlatPricing, Tariff, TariffSchedule
from protocol.messages import MEASURED, MESSAGES, encode_body, encode_message, utc_stamp
from protocol.mqtt import decode_message

ROOT = Path(__file__).resolve().parents[2]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63), st.text(max_size=20))
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
KINDS = st.sampled_from(["reading", "balance", "event", 'odd"kind'])
TIMES = st.datetimes(
    min_value=datetime(2000, 1, 1),  # noqa: DTZ001 - hypothesis wants naive bounds
    max_value=datetime(2100, 1, 1),  # noqa: DTZ001
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=3)), timezone(timedelta(hours=-5))]),
)
ENVELOPE = ("v", "gateway", "meter", "seq", "ts")


def reference(kind: str, body: dict[str, object], meter: str, seq: int, at: datetime) -> bytes:
    """What the wire format says, written out: the envelope, the topic's kind, then the
    body's other keys in their order."""
    stamp = at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    rest = {k: v for k, v in body.items() if k not in {*ENVELOPE, "kind"}}
    message = {"v": 1, "gateway": "gw-1", "meter": meter, "seq": seq, "ts": stamp}
    return json.dumps({**message, "kind": kind, **rest}, separators=(",", ":")).encode()


@given(
    kind=KINDS,
    body=st.dictionaries(st.text(max_size=10), VALUES, max_size=5),
    kind_first=st.booleans(),
    kind_in_body=st.sampled_from(["same", "other", "absent"]),
    at=TIMES,
    seq=st.integers(1, 2**40),
    meter=st.text(min_size=1, max_size=12),
)
def test_any_stored_body_is_encoded_as_the_wire_format_says(  # noqa: PLR0917 - hypothesis
    kind: str,
    body: dict[str, object],
    kind_first: bool,
    kind_in_body: str,
    at: datetime,
    seq: int,
    meter: str,
) -> None:
    body.pop("kind", None)
    if kind_in_body != "absent":
        value = kind if kind_in_body == "same" else "something-else"
        body = {"kind": value, **body} if kind_first else {**body, "kind": value}
    stored = encode_body(body)
    encoded = encode_message(kind, stored, gateway="gw-1", meter=meter, seq=seq, ts=utc_stamp(at))
    assert encoded == reference(kind, json.loads(stored), meter, seq, at)


def core_messages() -> list[Publish]:
    """Every kind of message the core builds, from a meter's ordinary life."""
    tariff = Tariff("KES", FlatPricing(Decimal(2000)), 30)
    t0 = datetime(2026, 11, 2, 8, tzinfo=UTC)
    state = enrol("m1", MeterSettings(TariffSchedule.single(tariff)), t0, opening_balance=900)
    events: list[Event] = [
        ReadingReceived("m1", 1000, t0, power_w=800, relay_closed=True, voltage_v=229.5),
        ReadingReceived(
            "m1",
            1200,
            t0 + timedelta(minutes=15),
            power_w=810,
            relay_closed=True,
            measured=(("current_a", 3.52), ("power_factor", 0.97), ("frequency_hz", 49.98)),
        ),
        ReadingReceived("m1", 1700, t0 + timedelta(minutes=30), cover_open=True),
        TopUpAccepted("m1", 5000, 1, "tok-1", "online", t0 + timedelta(minutes=31)),
        RemoteCommand("m1", RemoteKind.DISCONNECT, "moved out", t0 + timedelta(minutes=32)),
        CommunicationLost("m1", t0 + timedelta(minutes=40), "timeout"),
        ReadingReceived("m1", 1800, t0 + timedelta(days=1, minutes=5)),
    ]
    published = []
    for event in events:
        at = event.read_at if isinstance(event, ReadingReceived) else event.at
        state, commands = step(state, event, at)
        published += [c for c in commands if isinstance(c, Publish)]
    return published


def test_what_the_core_builds_is_valid_and_reads_back_in_the_defined_order() -> None:
    validators = load_validators()
    published = core_messages()
    assert {p.kind for p in published} == set(MESSAGES)
    for seq, message in enumerate(published, start=1):
        at = datetime(2026, 11, 2, 9, tzinfo=UTC) + timedelta(milliseconds=seq)
        payload = encode_message(
            message.kind,
            encode_body(message.body),
            gateway="gw-1",
            meter=message.meter_id,
            seq=seq,
            ts=utc_stamp(at),
        )
        data = json.loads(payload)
        assert [e.message for e in validators[message.kind].iter_errors(data)] == []
        fields = list(get_type_hints(MESSAGES[message.kind]))
        # every field in the defined order; a measured one only when the map publishes it
        assert list(data) == [k for k in fields if k in data]
        assert set(fields) - set(data) <= set(MEASURED)
        decoded = decode_message(payload)
        assert decoded["ts"] == at
        assert {**decoded, "ts": utc_stamp(decoded["ts"])} == data


EXAMPLE = re.compile(r"<!-- schema: (reading|balance|event) -->\s*```json\n(.*?)```", re.DOTALL)


def test_the_documented_examples_are_what_encode_message_writes() -> None:
    examples = EXAMPLE.findall((ROOT / "docs" / "mqtt.md").read_text())
    assert {kind for kind, _ in examples} == set(MESSAGES)
    for kind, text in examples:
        example = json.loads(text)
        body = {k: v for k, v in example.items() if k not in ENVELOPE}
        payload = encode_message(
            kind,
            encode_body(body),
            gateway=example["gateway"],
            meter=example["meter"],
            seq=example["seq"],
            ts=example["ts"],
        )
        assert payload == json.dumps(example, separators=(",", ":")).encode()
        assert decode_message(payload)["kind"] == kind
