"""The shell's door to token intake (``gateway.core.token_intake``, pure): online tokens
are checked against the vending service's public keys as the config gives them, loaded
once per set of keys. The moved names stay importable from here, the guard under its old
name too, for callers not yet moved."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.config import TokenSettings
from gateway.core import token_intake
from gateway.core.token_intake import (
    KeypadEntry,
    KeypadGuard,
    OnlineTopUp,
    TokenOutcome,
    intake_keypad,
)
from protocol.command_auth import load_public_keys
from protocol.tokens.replay import ReplayWindow

#: The old name of ``KeypadGuard``.
LockoutState = KeypadGuard

__all__ = [
    "KeypadEntry",
    "KeypadGuard",
    "LockoutState",
    "OnlineTopUp",
    "TokenOutcome",
    "intake_keypad",
    "intake_online",
    "online_keys",
]

_KEYS: dict[tuple[tuple[str, str], ...], dict[str, Ed25519PublicKey]] = {}


def online_keys(encoded: Mapping[str, str]) -> dict[str, Ed25519PublicKey]:
    """The public keys of ``encoded`` (key id -> base64url), loaded once per set."""
    cache_key = tuple(sorted(encoded.items()))
    keys = _KEYS.get(cache_key)
    if keys is None:
        keys = _KEYS[cache_key] = load_public_keys(encoded)
    return keys


def intake_online(
    top_up: OnlineTopUp,
    tokens: TokenSettings,
    *,
    window: ReplayWindow,
    currency: str,
    now: datetime,
    lockout: KeypadGuard | None = None,
) -> TokenOutcome:
    """``gateway.core.token_intake.intake_online`` with the keys of ``tokens``."""
    return token_intake.intake_online(
        top_up,
        online_keys(tokens.online_public_keys),
        window=window,
        currency=currency,
        now=now,
        lockout=lockout,
    )
