"""Per-meter keypad keys, derived from the utility's vending key so that a gateway holds
only the keys of its own meters and never the vending key.

``meter_key = HKDF-SHA256(ikm=vending_key, salt=none, info=LABEL || len(meter_id) ||
meter_id || epoch as u16 big-endian, length=32)``; the exact bytes are in docs/tokens.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VENDING_KEY_BYTES = 32
METER_KEY_BYTES = 32
MAX_METER_ID_LENGTH = 32
#: Key epochs are 0..8191: a key-change token carries the new epoch in 13 bits.
MAX_EPOCH = 8191
METER_KEY_INFO_LABEL = b"prepaid-edge/meter-key/v1"
_METER_ID = re.compile(rf"[!-~]{{1,{MAX_METER_ID_LENGTH}}}")


def meter_id_bytes(meter_id: str) -> bytes:
    """The meter id as ASCII bytes; ``ValueError`` unless 1..32 printable ASCII, no space."""
    if not _METER_ID.fullmatch(meter_id):
        raise ValueError(
            f"meter id must be 1..{MAX_METER_ID_LENGTH} printable ASCII characters: {meter_id!r}"
        )
    return meter_id.encode("ascii")


def check_epoch(epoch: int) -> int:
    if not 0 <= epoch <= MAX_EPOCH:
        raise ValueError(f"key epoch must be 0..{MAX_EPOCH}: {epoch}")
    return epoch


@dataclass(frozen=True, slots=True)
class MeterKey:
    """One meter's 256-bit keypad key for one epoch; its repr never shows the secret."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) != METER_KEY_BYTES:
            raise ValueError(f"a meter key is {METER_KEY_BYTES} bytes, got {len(self.secret)}")

    @classmethod
    def from_hex(cls, text: str) -> MeterKey:
        return cls(bytes.fromhex(text.strip()))

    def hex(self) -> str:
        return self.secret.hex()


def derive_meter_key(vending_key: bytes, meter_id: str, epoch: int) -> MeterKey:
    """The keypad key of ``meter_id`` in key epoch ``epoch``."""
    if len(vending_key) != VENDING_KEY_BYTES:
        raise ValueError(f"a vending key is {VENDING_KEY_BYTES} bytes, got {len(vending_key)}")
    mid = meter_id_bytes(meter_id)
    info = METER_KEY_INFO_LABEL + bytes([len(mid)]) + mid + check_epoch(epoch).to_bytes(2, "big")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=METER_KEY_BYTES, salt=None, info=info)
    return MeterKey(hkdf.derive(vending_key))
