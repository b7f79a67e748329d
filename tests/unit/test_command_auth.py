"""Remote commands are accepted only when signed by a known headend key and not expired; every tampering is refused with its reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from protocol.command_auth import (
    CommandAuthError,
    CommandAuthFailure,
    b64url_encode,
    load_public_keys,
    sign_command,
    verify_command,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
EXPIRES = NOW + timedelta(minutes=5)
HQ = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
KEYS = load_public_keys({"hq1": b64url_encode(HQ.public_key().public_bytes_raw())})
CMD = {"v": 1, "id": "r1", "cmd": "disconnect", "meter": "m1", "expires": EXPIRES.isoformat()}


def test_signed_command_verifies() -> None:
    verify_command(sign_command(CMD, "hq1", HQ), KEYS, NOW, EXPIRES)


@pytest.mark.parametrize(
    ("mutate", "failure"),
    [
        (lambda c: {k: v for k, v in c.items() if k != "sig"}, CommandAuthFailure.UNSIGNED),
        (lambda c: c | {"key_id": "hq9"}, CommandAuthFailure.UNKNOWN_KEY),
        (lambda c: c | {"cmd": "reconnect"}, CommandAuthFailure.BAD_SIGNATURE),
        (lambda c: c | {"meter": "m2"}, CommandAuthFailure.BAD_SIGNATURE),
        (lambda c: c | {"sig": "!!!"}, CommandAuthFailure.BAD_SIGNATURE),
    ],
)
def test_tampered_commands_fail(mutate: object, failure: CommandAuthFailure) -> None:
    signed = sign_command(CMD, "hq1", HQ)
    assert callable(mutate)
    with pytest.raises(CommandAuthError) as info:
        verify_command(mutate(signed), KEYS, NOW, EXPIRES)
    assert info.value.failure is failure


def test_foreign_key_fails() -> None:
    with pytest.raises(CommandAuthError) as info:
        verify_command(sign_command(CMD, "hq1", OTHER), KEYS, NOW, EXPIRES)
    assert info.value.failure is CommandAuthFailure.BAD_SIGNATURE


def test_expired_and_overlong_commands_fail() -> None:
    signed = sign_command(CMD, "hq1", HQ)
    with pytest.raises(CommandAuthError, match="expired"):
        verify_command(signed, KEYS, EXPIRES, EXPIRES)
    with pytest.raises(CommandAuthError, match="longer than allowed"):
        verify_command(signed, KEYS, NOW, NOW + timedelta(days=30))


@given(st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=6))
def test_arbitrary_dicts_never_verify(command: dict[str, str]) -> None:
    with pytest.raises(CommandAuthError):
        verify_command(command, KEYS, NOW, EXPIRES)
