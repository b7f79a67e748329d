"""The shipped test vectors (tests/data/token_vectors.json) are reproduced exactly, both by our code and by an independent re-implementation of docs/tokens.md using only hashlib, hmac and cryptography."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocol.tokens import (
    Accepted,
    Rejected,
    RejectReason,
    ReplayWindow,
    TokenClass,
    derive_meter_key,
    issue_keypad,
    issue_online,
    verify_keypad,
    verify_online,
)
from protocol.tokens.checkdigit import DAMM_TABLE
from protocol.tokens.online import b64url_decode, load_public_key

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "data" / "token_vectors.json").read_text()
)
VENDING_KEY = bytes.fromhex(VECTORS["vending_key_hex"])
CLASSES = {c.cli_name: c for c in TokenClass}


def spec_keypad_digits(vector: dict[str, Any]) -> tuple[bytes, bytes, str]:
    """docs/tokens.md, written out again from the text: (meter key, MAC message, digits)."""
    meter = vector["meter_id"].encode("ascii")
    info = (
        b"prepaid-edge/meter-key/v1"
        + bytes([len(meter)])
        + meter
        + vector["epoch"].to_bytes(2, "big")
    )
    meter_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(VENDING_KEY)
    token_class = CLASSES[vector["class"]]
    if token_class is TokenClass.CREDIT:
        kind, value = 0, vector["value"]
        exponent = next(e for e in range(4) if value // 10**e <= 16383)
        field = exponent << 14 | value // 10**exponent
    else:
        value = vector["value"] // (10 if token_class is TokenClass.SET_MAX_POWER else 1)
        kind, field = 1, (int(token_class) - 1) << 13 | value
    message = (
        b"prepaid-edge/keypad/v1" + bytes([len(meter)]) + meter + vector["epoch"].to_bytes(2, "big")
        + bytes([kind]) + vector["counter"].to_bytes(2, "big") + field.to_bytes(2, "big")
    )  # fmt: skip
    mac = int.from_bytes(hmac.digest(meter_key, message, hashlib.sha256)[:4], "big") >> 3
    payload = kind << 61 | vector["counter"] << 45 | field << 29 | mac
    body = f"{payload:019d}"
    interim = 0
    for ch in body:
        interim = DAMM_TABLE[interim][int(ch)]
    return meter_key, message, body + str(interim)


@pytest.mark.parametrize(
    "vector", VECTORS["keypad"], ids=lambda v: f"{v['meter_id']}:{v['counter']}"
)
def test_keypad_vectors(vector: dict[str, Any]) -> None:
    meter_key, message, digits = spec_keypad_digits(vector)
    assert meter_key.hex() == vector["meter_key_hex"]
    assert message.hex() == vector["mac_message_hex"]
    assert digits == vector["digits"]
    token_class = CLASSES[vector["class"]]
    ours = issue_keypad(
        VENDING_KEY,
        vector["meter_id"],
        vector["epoch"],
        token_class,
        vector["counter"],
        vector["value"],
    )
    assert ours == vector["digits"]
    key = derive_meter_key(VENDING_KEY, vector["meter_id"], vector["epoch"])
    assert key.hex() == vector["meter_key_hex"]
    result = verify_keypad(ours, vector["meter_id"], key, ReplayWindow.fresh(vector["epoch"]))
    assert isinstance(result, Accepted)
    assert (result.token_class, result.counter, result.amount) == (
        token_class,
        vector["counter"],
        vector["value"],
    )


@pytest.mark.parametrize("vector", VECTORS["online"], ids=lambda v: v["txn_id_hex"][:8])
def test_online_vectors(vector: dict[str, Any]) -> None:
    private = Ed25519PrivateKey.from_private_bytes(
        bytes.fromhex(VECTORS["online_signing_seed_hex"])
    )
    public = load_public_key(VECTORS["online_public_key_b64url"])
    issued = datetime.fromisoformat(vector["issued_at"])
    expires = datetime.fromisoformat(vector["expires_at"])
    token = issue_online(
        private, vector["key_id"], vector["meter_id"], vector["counter"], CLASSES[vector["class"]],
        vector["value"], vector["currency"], bytes.fromhex(vector["txn_id_hex"]), issued, expires,
        vector["epoch"],
    )  # fmt: skip
    assert token == vector["token"]
    raw = b64url_decode(token)
    assert raw.hex() == vector["body_hex"] + vector["signature_hex"]
    # The body, byte by byte, as the spec lays it out.
    kid, meter = vector["key_id"].encode(), vector["meter_id"].encode()
    body = (
        bytes([1, len(kid)]) + kid + bytes([len(meter)]) + meter
        + vector["epoch"].to_bytes(2, "big") + vector["counter"].to_bytes(2, "big")
        + bytes([int(CLASSES[vector["class"]])]) + vector["value"].to_bytes(4, "big")
        + vector["currency"].encode() + bytes.fromhex(vector["txn_id_hex"])
        + vector["issued_at_unix"].to_bytes(8, "big") + vector["expires_at_unix"].to_bytes(8, "big")
    )  # fmt: skip
    assert body.hex() == vector["body_hex"]
    public.verify(bytes.fromhex(vector["signature_hex"]), b"prepaid-edge/online-token/v1" + body)
    result = verify_online(
        token,
        vector["meter_id"],
        {vector["key_id"]: public},
        ReplayWindow.fresh(vector["epoch"]),
        issued,
    )
    assert isinstance(result, Accepted)
    assert result.amount == vector["value"]


@pytest.mark.parametrize("vector", VECTORS["keypad_rejections"], ids=lambda v: v["reason"])
def test_keypad_rejection_vectors(vector: dict[str, Any]) -> None:
    key = derive_meter_key(VENDING_KEY, vector["meter_id"], vector["epoch"])
    window = ReplayWindow(vector["epoch"], vector["highest"], vector["bitmap"])
    result = verify_keypad(vector["digits"], vector["meter_id"], key, window)
    assert isinstance(result, Rejected)
    assert result.reason is RejectReason(vector["reason"])
