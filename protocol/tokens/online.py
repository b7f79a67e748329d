"""The online token: canonical bytes signed with Ed25519 by the vending service, sent as
base64url. The gateway holds only public keys (by key id), so nothing on a gateway or a
broker can mint one.

Body, big-endian, no padding, nothing after it: version u8 (1), key id (u8 length +
ASCII), meter id (u8 length + ASCII), key epoch u16, counter u16, class u8, amount u32,
currency (3 ASCII capitals), transaction id (16 bytes), issued at u64 and expires at u64
(Unix seconds, UTC). Then the 64-byte Ed25519 signature of ``SIGN_LABEL || body``. The
counter and epoch share the keypad's replay window, so one purchase credits once.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol.tokens.errors import RejectReason
from protocol.tokens.keys import check_epoch, meter_id_bytes
from protocol.tokens.replay import MAX_COUNTER, ReplayWindow
from protocol.tokens.results import Accepted, Channel, Rejected
from protocol.tokens.token_class import TokenClass, value_in_range

VERSION = 1
SIGN_LABEL = b"prepaid-edge/online-token/v1"
SIGNATURE_BYTES = 64
TXN_ID_BYTES = 16
#: Longest possible token: 1 + 33 + 33 + 2 + 2 + 1 + 4 + 3 + 16 + 8 + 8 + 64 bytes.
MAX_TOKEN_BYTES = 175
_MAX_TOKEN_TEXT = (MAX_TOKEN_BYTES * 4 + 2) // 3
_TAIL = struct.Struct(">HHBI3s16sQQ")
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_ID = re.compile(rb"[!-~]{1,32}")
_CURRENCY = re.compile(rb"[A-Z]{3}")


def b64url_encode(data: bytes) -> str:
    """base64url without padding (RFC 4648 section 5)."""
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def b64url_decode(text: str) -> bytes:
    """Strict inverse of :func:`b64url_encode`: ``ValueError`` on anything else."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not unpadded base64url") from None
    if b64url_encode(data) != text:
        raise ValueError("non-canonical base64url")
    return data


def load_public_key(text: str) -> Ed25519PublicKey:
    """A vending public key from its base64url text (32 raw bytes), as configs hold it."""
    raw = b64url_decode(text)
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


@dataclass(frozen=True, slots=True)
class OnlineToken:
    """The decoded fields of an online token (not yet verified)."""

    key_id: str
    meter_id: str
    epoch: int
    counter: int
    token_class: TokenClass
    amount: int
    currency: str
    txn_id: bytes
    issued_at: int
    expires_at: int

    def body(self) -> bytes:
        """The canonical bytes of every field (what is signed, after the label)."""
        kid = self.key_id.encode("ascii")
        mid = meter_id_bytes(self.meter_id)
        return (
            bytes([VERSION, len(kid)])
            + kid
            + bytes([len(mid)])
            + mid
            + _TAIL.pack(
                self.epoch,
                self.counter,
                self.token_class,
                self.amount,
                self.currency.encode("ascii"),
                self.txn_id,
                self.issued_at,
                self.expires_at,
            )
        )


def _read_id(data: bytes, offset: int, what: str) -> tuple[str, int]:
    if offset >= len(data):
        raise ValueError(f"truncated before {what}")
    end = offset + 1 + data[offset]
    raw = data[offset + 1 : end]
    if end > len(data) or not _ID.fullmatch(raw):
        raise ValueError(f"{what} must be 1..32 printable ASCII")
    return raw.decode("ascii"), end


def parse_online_token(data: bytes) -> tuple[OnlineToken, bytes, bytes]:
    """(fields, signed body, signature) of raw token bytes; ``ValueError`` if the bytes
    are not exactly one canonical token."""
    if len(data) > MAX_TOKEN_BYTES or not data:
        raise ValueError(f"{len(data)} bytes is not a token length")
    if data[0] != VERSION:
        raise ValueError(f"unknown version {data[0]}")
    key_id, offset = _read_id(data, 1, "key id")
    meter_id, offset = _read_id(data, offset, "meter id")
    if len(data) != offset + _TAIL.size + SIGNATURE_BYTES:
        raise ValueError("wrong length for its ids")
    epoch, counter, code, amount, currency, txn_id, issued, expires = _TAIL.unpack_from(
        data, offset
    )
    if code > max(TokenClass):
        raise ValueError(f"unknown token class {code}")
    if not _CURRENCY.fullmatch(currency):
        raise ValueError("currency must be 3 capital letters")
    check_epoch(epoch)
    if issued > expires:
        raise ValueError("issued after it expires")
    body_end = offset + _TAIL.size
    token = OnlineToken(
        key_id,
        meter_id,
        epoch,
        counter,
        TokenClass(code),
        amount,
        currency.decode("ascii"),
        txn_id,
        issued,
        expires,
    )
    return token, data[:body_end], data[body_end:]


def _unix_seconds(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError(f"token times must be timezone-aware: {moment!r}")
    return int(moment.timestamp())


def issue_online(  # noqa: PLR0917  (the documented vending interface)
    private_key: Ed25519PrivateKey,
    key_id: str,
    meter_id: str,
    counter: int,
    token_class: TokenClass,
    amount: int,
    currency: str,
    txn_id: bytes,
    issued_at: datetime,
    expires_at: datetime,
    epoch: int = 0,
) -> str:
    """The vending side: a signed online token as base64url. Times are whole seconds
    (fractions dropped); ``ValueError`` on any field the format cannot carry."""
    if not key_id.isascii() or not _ID.fullmatch(key_id.encode("ascii")):
        raise ValueError(f"key id must be 1..32 printable ASCII: {key_id!r}")
    if not currency.isascii() or not _CURRENCY.fullmatch(currency.encode("ascii")):
        raise ValueError(f"currency must be 3 capital letters: {currency!r}")
    if len(txn_id) != TXN_ID_BYTES:
        raise ValueError(f"transaction id is {TXN_ID_BYTES} bytes")
    if not 0 <= counter <= MAX_COUNTER:
        raise ValueError(f"counter must be 0..{MAX_COUNTER}: {counter}")
    if not value_in_range(token_class, amount, epoch):
        raise ValueError(f"{token_class.name} value out of range: {amount}")
    issued, expires = _unix_seconds(issued_at), _unix_seconds(expires_at)
    if not 0 <= issued <= expires:
        raise ValueError("a token must expire after it is issued")
    body = OnlineToken(
        key_id,
        meter_id,
        check_epoch(epoch),
        counter,
        token_class,
        amount,
        currency,
        txn_id,
        issued,
        expires,
    ).body()
    return b64url_encode(body + private_key.sign(SIGN_LABEL + body))


def online_token_document(token: str) -> dict[str, Any]:
    """The JSON the CLI prints and a headend may publish: ``v`` and ``token`` are the
    message; the other fields are a readable copy, never trusted by a verifier."""
    fields, _, _ = parse_online_token(b64url_decode(token))
    return {
        "v": VERSION,
        "token": token,
        "key_id": fields.key_id,
        "meter": fields.meter_id,
        "epoch": fields.epoch,
        "counter": fields.counter,
        "class": fields.token_class.cli_name,
        "amount": fields.amount,
        "currency": fields.currency,
        "txn_id": fields.txn_id.hex(),
        "issued_at": datetime.fromtimestamp(fields.issued_at, UTC).isoformat(),
        "expires_at": datetime.fromtimestamp(fields.expires_at, UTC).isoformat(),
    }


def verify_online(
    token: str | bytes,
    meter_id: str,
    public_keys: Mapping[str, Ed25519PublicKey],
    window: ReplayWindow,
    now: datetime,
) -> Accepted | Rejected:
    """Check an online token (base64url text or raw bytes) for this meter. Pure: the caller
    records the window and credits in one transaction."""
    meter_id_bytes(meter_id)  # a bad meter id is our fault: ValueError
    now_s = _unix_seconds(now)
    try:
        if isinstance(token, str):
            if len(token) > _MAX_TOKEN_TEXT:
                raise ValueError("too long")
            token = b64url_decode(token)
        fields, body, signature = parse_online_token(token)
    except ValueError as exc:
        return Rejected(RejectReason.MALFORMED, str(exc))
    public_key = public_keys.get(fields.key_id)
    if public_key is None:
        return Rejected(RejectReason.UNKNOWN_KEY, fields.key_id)
    try:
        public_key.verify(signature, SIGN_LABEL + body)
    except InvalidSignature:
        return Rejected(RejectReason.BAD_SIGNATURE)
    if fields.meter_id != meter_id:
        return Rejected(RejectReason.WRONG_METER_OR_FORGED, f"for meter {fields.meter_id}")
    if now_s >= fields.expires_at:
        return Rejected(RejectReason.EXPIRED, f"expired at {fields.expires_at}")
    if fields.epoch != window.epoch:
        older = fields.epoch < window.epoch
        reason = RejectReason.TOO_OLD if older else RejectReason.WRONG_METER_OR_FORGED
        return Rejected(reason, f"key epoch {fields.epoch}, meter at {window.epoch}")
    if not value_in_range(fields.token_class, fields.amount, window.epoch):
        return Rejected(
            RejectReason.AMOUNT_OUT_OF_RANGE, f"{fields.token_class.name} {fields.amount}"
        )
    replay = window.check(fields.counter)
    if replay is not None:
        return Rejected(replay, f"counter {fields.counter}")
    return Accepted(
        meter_id,
        fields.token_class,
        fields.counter,
        fields.amount,
        fields.epoch,
        Channel.ONLINE,
        fields.currency,
        fields.txn_id.hex(),
    )
