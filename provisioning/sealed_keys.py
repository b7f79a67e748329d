"""The secrets an enrolment export carries, sealed: meter keys, keys of later epochs and
DL/T 645 control secrets, each set encrypted with AES-256-GCM under a key scrypt (n=2^15,
r=8, p=1) derives from the operator's passphrase, the file's format name bound in as
associated data. Never in the clear."""

from __future__ import annotations

import base64
import getpass
import json
import os
import re
import secrets
import sys
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from pydantic import JsonValue

from protocol.tokens.keys import MAX_EPOCH, METER_KEY_BYTES
from provisioning.errors import ProvisionError
from provisioning.interrupt import Interrupted

FORMAT = "prepaid-edge-enrolment"
PASSPHRASE_ENV = "PREPAID_EDGE_PASSPHRASE"  # noqa: S105  (a variable name, not a secret)
_SCRYPT_N = 2**15


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise ProvisionError(f"keys.{what} is missing")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise ProvisionError(f"keys.{what} is not base64") from None


def _kdf(salt: bytes) -> Scrypt:
    return Scrypt(salt=salt, length=32, n=_SCRYPT_N, r=8, p=1)


def encrypt_keys(keys: dict[str, str], passphrase: str) -> dict[str, JsonValue]:
    salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
    key = _kdf(salt).derive(passphrase.encode())
    sealed = AESGCM(key).encrypt(nonce, json.dumps(keys).encode(), FORMAT.encode())
    return {
        "kdf": "scrypt",
        "n": _SCRYPT_N,
        "r": 8,
        "p": 1,
        "cipher": "aes-256-gcm",
        "salt": _b64(salt),
        "nonce": _b64(nonce),
        "ciphertext": _b64(sealed),
    }


def decrypt_keys(sealed: dict[str, Any], passphrase: str, what: str = "keys") -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for meter, text in unseal(sealed, passphrase).items():
        try:
            raw = bytes.fromhex(str(text))
        except ValueError:
            raw = b""
        if len(raw) != METER_KEY_BYTES:
            raise ProvisionError(f"{what}: {meter}: not a {METER_KEY_BYTES}-byte key")
        out[meter] = raw
    return out


#: how a later epoch's key is named in the sealed ``next_keys``: METER@EPOCH
_AT = "@"


def later_key_name(meter: str, epoch: int) -> str:
    """How the key of ``meter``'s ``epoch`` is named in the sealed ``next_keys``."""
    return f"{meter}{_AT}{epoch}"


def later_keys(by_name: dict[str, bytes]) -> list[tuple[str, int, bytes]]:
    """The sealed ``next_keys`` as (meter, epoch, key), checked."""
    out = []
    for name, key in by_name.items():
        meter, at, epoch = name.rpartition(_AT)
        if not at or not re.fullmatch(r"[0-9]{1,5}", epoch) or not 1 <= int(epoch) <= MAX_EPOCH:
            raise ProvisionError(f"next_keys: {name!r} is not METER{_AT}EPOCH (1..{MAX_EPOCH})")
        out.append((meter, int(epoch), key))
    return out


def unseal(sealed: dict[str, Any], passphrase: str) -> dict[str, str]:
    """What :func:`encrypt_keys` sealed, by meter."""
    if sealed.get("kdf") != "scrypt" or sealed.get("cipher") != "aes-256-gcm":
        raise ProvisionError("keys: unknown encryption (expected scrypt + aes-256-gcm)")
    if (sealed.get("n"), sealed.get("r"), sealed.get("p")) != (_SCRYPT_N, 8, 1):
        raise ProvisionError(f"keys: scrypt parameters must be n={_SCRYPT_N}, r=8, p=1")
    salt = _unb64(sealed.get("salt"), "salt")
    nonce = _unb64(sealed.get("nonce"), "nonce")
    ciphertext = _unb64(sealed.get("ciphertext"), "ciphertext")
    if len(salt) != 16 or len(nonce) != 12:
        raise ProvisionError("keys: salt must be 16 bytes and nonce 12")
    key = _kdf(salt).derive(passphrase.encode())
    try:
        plain = AESGCM(key).decrypt(nonce, ciphertext, FORMAT.encode())
    except (InvalidTag, ValueError):
        raise ProvisionError("keys: wrong passphrase or a damaged file") from None
    return {str(meter): str(text) for meter, text in json.loads(plain).items()}


def ask_passphrase(confirm: bool) -> str:
    value = os.environ.get(PASSPHRASE_ENV)
    if value is None:
        try:
            value = getpass.getpass("passphrase for the meter keys: ")
            if confirm and getpass.getpass("again: ") != value:
                raise ProvisionError("the passphrases differ")
        except Interrupted:
            print(file=sys.stderr)  # end the prompt's line
            raise
    if len(value) < 12:
        raise ProvisionError("the passphrase must have at least 12 characters")
    return value
