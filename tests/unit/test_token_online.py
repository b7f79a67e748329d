"""Online tokens verify only with a known public key, for their meter, before expiry and once; every flipped bit, unknown key id or past expiry is refused with its reason; one purchase sent both ways credits once."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from protocol.tokens import (
    Accepted,
    Channel,
    Rejected,
    RejectReason,
    ReplayWindow,
    TokenClass,
    TokenRejected,
    accepted_or_raise,
    derive_meter_key,
    issue_keypad,
    issue_online,
    online_token_document,
    verify_keypad,
    verify_online,
)
from protocol.tokens.online import SIGNATURE_BYTES, b64url_decode, b64url_encode

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=7)
VENDOR_1 = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
VENDOR_2 = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))
INTRUDER = Ed25519PrivateKey.from_private_bytes(bytes(range(7, 39)))
PUBLIC = {"v1": VENDOR_1.public_key(), "v2": VENDOR_2.public_key()}
METER = "PE1-000042"
TXN = bytes.fromhex("00112233445566778899aabbccddeeff")
FRESH = ReplayWindow.fresh(0)


def reason_of(result: Accepted | Rejected) -> RejectReason | None:
    return result.reason if isinstance(result, Rejected) else None


def online(
    counter: int = 5,
    amount: int = 1250,
    *,
    key: Ed25519PrivateKey = VENDOR_1,
    key_id: str = "v1",
    meter: str = METER,
    token_class: TokenClass = TokenClass.CREDIT,
    expires: datetime = LATER,
    epoch: int = 0,
) -> str:
    return issue_online(
        key, key_id, meter, counter, token_class, amount, "KES", TXN, NOW, expires, epoch
    )


def test_valid_token_is_accepted_with_its_fields() -> None:
    result = verify_online(online(), METER, PUBLIC, FRESH, NOW)
    assert result == Accepted(
        METER, TokenClass.CREDIT, 5, 1250, 0, Channel.ONLINE, "KES", TXN.hex()
    )
    assert accepted_or_raise(result).token_id == "PE1-000042:0:5"


def test_raw_bytes_and_second_active_key_verify() -> None:
    assert isinstance(verify_online(b64url_decode(online()), METER, PUBLIC, FRESH, NOW), Accepted)
    assert isinstance(
        verify_online(online(key=VENDOR_2, key_id="v2"), METER, PUBLIC, FRESH, NOW), Accepted
    )


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (lambda: online(key_id="v9"), RejectReason.UNKNOWN_KEY),
        (lambda: online(key=INTRUDER), RejectReason.BAD_SIGNATURE),
        (lambda: online(key=VENDOR_2, key_id="v1"), RejectReason.BAD_SIGNATURE),
        (lambda: online(meter="PE1-000043"), RejectReason.WRONG_METER_OR_FORGED),
        (lambda: online(expires=NOW), RejectReason.EXPIRED),
        (lambda: online(epoch=1), RejectReason.WRONG_METER_OR_FORGED),
    ],
)
def test_refusals_with_their_reason(token: Callable[[], str], reason: RejectReason) -> None:
    result = verify_online(token(), METER, PUBLIC, FRESH, NOW)
    assert isinstance(result, Rejected)
    assert result.reason is reason
    with pytest.raises(TokenRejected):
        accepted_or_raise(result)


def test_past_expiry_fails_only_after_its_time() -> None:
    token = online(expires=NOW + timedelta(hours=1))
    assert isinstance(
        verify_online(token, METER, PUBLIC, FRESH, NOW + timedelta(minutes=59)), Accepted
    )
    assert (
        reason_of(verify_online(token, METER, PUBLIC, FRESH, NOW + timedelta(hours=2)))
        is RejectReason.EXPIRED
    )


def test_old_epoch_is_too_old() -> None:
    assert (
        reason_of(verify_online(online(), METER, PUBLIC, ReplayWindow.fresh(1), NOW))
        is RejectReason.TOO_OLD
    )


def test_every_single_flipped_bit_is_refused() -> None:
    raw = b64url_decode(online())
    body_bits = (len(raw) - SIGNATURE_BYTES) * 8
    for bit in range(len(raw) * 8):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        result = verify_online(bytes(flipped), METER, PUBLIC, FRESH, NOW)
        assert isinstance(result, Rejected), bit
        if bit >= body_bits:
            assert result.reason is RejectReason.BAD_SIGNATURE, bit
        else:
            assert result.reason in {
                RejectReason.BAD_SIGNATURE,
                RejectReason.MALFORMED,
                RejectReason.UNKNOWN_KEY,
            }, (bit, result)


def test_flips_in_fixed_fields_are_bad_signatures() -> None:
    raw = b64url_decode(online())
    # version(1) kid(1+2) meter(1+10): the fixed fields start at byte 15
    for offset in range(15, len(raw) - SIGNATURE_BYTES):
        flipped = bytearray(raw)
        flipped[offset] ^= 0x01
        result = verify_online(bytes(flipped), METER, PUBLIC, FRESH, NOW)
        assert isinstance(result, Rejected)
        assert result.reason in {RejectReason.BAD_SIGNATURE, RejectReason.MALFORMED}, offset


def test_replay_and_window() -> None:
    window = FRESH
    for counter in (10, 3, 7):
        result = verify_online(online(counter), METER, PUBLIC, window, NOW)
        assert isinstance(result, Accepted)
        window = window.record(result.counter)
    for counter in (10, 3, 7):
        assert (
            reason_of(verify_online(online(counter), METER, PUBLIC, window, NOW))
            is RejectReason.REPLAYED
        )


@pytest.mark.parametrize("first", ["keypad", "online"])
def test_one_purchase_by_keypad_and_online_credits_once(first: str) -> None:
    """The store keeps one window per meter: whichever channel arrives first credits."""
    vending_key = bytes(range(32))
    meter_key = derive_meter_key(vending_key, METER, 0)
    digits = issue_keypad(vending_key, METER, 0, TokenClass.CREDIT, 42, 1250)
    token = online(42, 1250)

    def deliver(channel: str, window: ReplayWindow) -> Accepted | Rejected:
        if channel == "keypad":
            return verify_keypad(digits, METER, meter_key, window)
        return verify_online(token, METER, PUBLIC, window, NOW)

    window, credited = FRESH, 0
    for channel in (first, "online" if first == "keypad" else "keypad") * 2:
        result = deliver(channel, window)
        if isinstance(result, Accepted):
            window, credited = window.record(result.counter), credited + result.amount
        else:
            assert result.reason is RejectReason.REPLAYED
    assert credited == 1250


def test_amount_out_of_range_is_refused_even_when_signed() -> None:
    # The vending side refuses to sign it; a buggy vendor with the real key is still caught.
    from protocol.tokens.online import SIGN_LABEL, OnlineToken  # noqa: PLC0415

    body = OnlineToken(
        "v1", METER, 0, 1, TokenClass.CREDIT, 10_000_001, "KES", TXN, 0, 2**40
    ).body()
    raw = body + VENDOR_1.sign(SIGN_LABEL + body)
    assert (
        reason_of(verify_online(raw, METER, PUBLIC, FRESH, NOW)) is RejectReason.AMOUNT_OUT_OF_RANGE
    )
    with pytest.raises(ValueError, match="range"):
        online(amount=10_000_001)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "not base64!",
        "A",
        online() + "=",
        online() + "AA",
        online()[:-2],
        "A" * 5000,
        b64url_encode(b"\x02" + b64url_decode(online())[1:]),
    ],
)
def test_garbage_is_malformed(bad: str) -> None:
    result = verify_online(bad, METER, PUBLIC, FRESH, NOW)
    assert isinstance(result, Rejected)
    assert result.reason is RejectReason.MALFORMED


@given(st.binary(max_size=200))
def test_any_bytes_give_a_verdict_and_never_raise(data: bytes) -> None:
    assert isinstance(verify_online(data, METER, PUBLIC, FRESH, NOW), Rejected)


@given(st.text(max_size=300))
def test_any_text_gives_a_verdict_and_never_raises(text: str) -> None:
    assert isinstance(verify_online(text, METER, PUBLIC, FRESH, NOW), Rejected)


@given(
    st.integers(0, 65535),
    st.sampled_from(list(TokenClass)),
    st.integers(0, 8191),
    st.binary(min_size=16, max_size=16),
    st.from_regex(r"[!-~]{1,32}", fullmatch=True),
)
def test_issue_then_verify_round_trips(
    counter: int, token_class: TokenClass, value: int, txn: bytes, meter: str
) -> None:
    value = max(value, 1)
    token = issue_online(VENDOR_1, "v1", meter, counter, token_class, value, "EUR", txn, NOW, LATER)
    result = verify_online(token, meter, PUBLIC, FRESH, NOW)
    assert result == Accepted(
        meter, token_class, counter, value, 0, Channel.ONLINE, "EUR", txn.hex()
    )


def test_document_is_json_with_the_token() -> None:
    token = online()
    doc = online_token_document(token)
    assert json.loads(json.dumps(doc))["token"] == token
    assert doc["meter"] == METER
    assert doc["class"] == "credit"
    assert base64.urlsafe_b64decode(token + "==")[0] == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"key_id": ""},
        {"key_id": "é"},
        {"meter": "a b"},
        {"counter": 65536},
        {"expires": NOW - timedelta(seconds=1)},
        {"epoch": 8192},
    ],
)
def test_vending_refuses_fields_the_format_cannot_carry(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011  (each case has its own message)
        online(**kwargs)  # type: ignore[arg-type]
