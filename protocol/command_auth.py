"""Headend command signatures: remote commands that switch supply or move money must be
signed with the headend's Ed25519 key and not yet expired.

The headend signs :func:`protocol.mqtt.signing_bytes` of the command (its JSON without
``sig``, keys sorted, compact, UTF-8) and puts the base64url signature in ``sig``. The
gateway holds only public keys, by key id. Verification is pure: ``now`` is an argument.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol.errors import ProtocolError
from protocol.mqtt import signing_bytes

#: The longest validity a headend may give a command: a stale command is refused even
#: if its own ``expires`` is far away.
MAX_COMMAND_LIFETIME = timedelta(hours=24)


class CommandAuthFailure(StrEnum):
    UNSIGNED = "unsigned"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"


class CommandAuthError(ProtocolError):
    """A remote command whose signature or expiry does not hold (the sender's fault)."""

    def __init__(self, failure: CommandAuthFailure, detail: str = "") -> None:
        self.failure = failure
        super().__init__(f"{failure}: {detail}" if detail else str(failure))


def b64url_decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def load_public_keys(encoded: Mapping[str, str]) -> dict[str, Ed25519PublicKey]:
    """Key id -> public key from base64url text (as the config holds them)."""
    return {kid: Ed25519PublicKey.from_public_bytes(b64url_decode(v)) for kid, v in encoded.items()}


def sign_command(command: dict[str, Any], key_id: str, key: Ed25519PrivateKey) -> dict[str, Any]:
    """The headend's side: a copy of ``command`` with ``key_id`` and ``sig`` set."""
    body = {k: v for k, v in command.items() if k != "sig"} | {"key_id": key_id}
    return body | {"sig": b64url_encode(key.sign(signing_bytes(body)))}


def verify_command(
    command: Mapping[str, Any],
    public_keys: Mapping[str, Ed25519PublicKey],
    now: datetime,
    expires: datetime,
) -> None:
    """Raise :class:`CommandAuthError` unless ``command`` is signed by a known key and
    ``now`` is before ``expires`` (and ``expires`` is not absurdly far away)."""
    sig = command.get("sig")
    key_id = command.get("key_id")
    if not isinstance(sig, str) or not isinstance(key_id, str):
        raise CommandAuthError(CommandAuthFailure.UNSIGNED)
    key = public_keys.get(key_id)
    if key is None:
        raise CommandAuthError(CommandAuthFailure.UNKNOWN_KEY, key_id)
    try:
        key.verify(b64url_decode(sig), signing_bytes(dict(command)))
    except (InvalidSignature, ValueError):
        raise CommandAuthError(CommandAuthFailure.BAD_SIGNATURE) from None
    if now >= expires:
        raise CommandAuthError(CommandAuthFailure.EXPIRED, f"expired {expires.isoformat()}")
    if expires - now > MAX_COMMAND_LIFETIME:
        raise CommandAuthError(CommandAuthFailure.EXPIRED, "validity longer than allowed")
