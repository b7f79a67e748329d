"""The drain's envelope spliced from the stored JSON is byte for byte the envelope built
from the decoded row, for any body and stored time (and falls back when it cannot splice)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from gateway.store import OutboxRow, RawOutboxRow
from gateway.sync import envelope, envelope_raw

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


@given(
    kind=KINDS,
    body=st.dictionaries(st.text(max_size=10), VALUES, max_size=5),
    kind_first=st.booleans(),
    kind_in_body=st.sampled_from(["same", "other", "absent"]),
    at=TIMES,
    seq=st.integers(1, 2**40),
    meter=st.text(min_size=1, max_size=12),
)
def test_spliced_envelope_equals_the_decoded_one(  # noqa: PLR0917 - hypothesis arguments
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
    stored = json.dumps(body, separators=(",", ":"))
    raw = RawOutboxRow(7, meter, seq, kind, at.isoformat(), stored)
    decoded = OutboxRow(7, meter, seq, kind, at, json.loads(stored))
    stamps: dict[str, str] = {}
    quoted: dict[str, str] = {}
    assert envelope_raw("gw-1", raw, stamps, quoted) == envelope("gw-1", decoded)
    assert envelope_raw("gw-1", raw, stamps, quoted) == envelope("gw-1", decoded)  # cached
