"""The shell's door to online token intake (``gateway.core.token_intake``, pure): online
tokens are checked against the vending service's public keys as the config gives them,
loaded once per set of keys."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.config import TokenSettings
from gateway.core import token_intake
from gateway.core.token_intake import KeypadGuard, MeterAbilities, OnlineTopUp, TokenOutcome
from protocol.command_auth import load_public_keys
from protocol.tokens.replay import ReplayWindow

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
    abilities: MeterAbilities | None = None,
) -> TokenOutcome:
    """``gateway.core.token_intake.intake_online`` with the keys of ``tokens``."""
    return token_intake.intake_online(
        top_up,
        online_keys(tokens.online_public_keys),
        window=window,
        currency=currency,
        now=now,
        lockout=lockout,
        abilities=abilities,
    )
