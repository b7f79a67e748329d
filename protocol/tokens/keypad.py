"""The 20-digit keypad token: 19 digits carrying a 63-bit payload, then a Damm check digit.

Payload, most significant bit first: kind (2 bits: 0 credit, 1 management, 2 and 3
reserved), purchase counter (16), amount field (16), MAC (29). For credit the amount
field is the exponent/mantissa amount (:mod:`protocol.tokens.amount`); for management
it is a 3-bit sub-type (the token class minus one) and a 13-bit value. The MAC is the
top 29 bits of HMAC-SHA256(meter key, label || meter id || epoch || kind || counter ||
amount field). The layout and its security figures are in docs/tokens.md.
"""

from __future__ import annotations

import hashlib
import hmac

from protocol.tokens.amount import decode_keypad_amount, encode_keypad_amount
from protocol.tokens.checkdigit import damm_check_digit, damm_valid
from protocol.tokens.errors import RejectReason
from protocol.tokens.keys import MeterKey, check_epoch, derive_meter_key, meter_id_bytes
from protocol.tokens.replay import MAX_COUNTER, ReplayWindow
from protocol.tokens.results import Accepted, Channel, Rejected
from protocol.tokens.token_class import (
    MAX_MANAGEMENT_VALUE,
    MAX_POWER_STEP_W,
    TokenClass,
    value_in_range,
)

TOKEN_DIGITS = 20
PAYLOAD_DIGITS = 19
PAYLOAD_BITS = 63
MAC_BITS = 29
KIND_CREDIT = 0
KIND_MANAGEMENT = 1
MAC_LABEL = b"prepaid-edge/keypad/v1"
_VALUE_BITS = 13
_SEPARATORS = str.maketrans("", "", " -")


def mac_message(meter_id: str, epoch: int, kind: int, counter: int, amount_field: int) -> bytes:
    """The bytes the MAC covers: label, u8 length and meter id, u16 epoch, u8 kind,
    u16 counter, u16 amount field (all big-endian)."""
    mid = meter_id_bytes(meter_id)
    return (
        MAC_LABEL
        + bytes([len(mid)])
        + mid
        + epoch.to_bytes(2, "big")
        + bytes([kind])
        + counter.to_bytes(2, "big")
        + amount_field.to_bytes(2, "big")
    )


def keypad_mac(key: MeterKey, message: bytes) -> int:
    """The top 29 bits of HMAC-SHA256 over ``message``."""
    digest = hmac.digest(key.secret, message, hashlib.sha256)
    return int.from_bytes(digest[:4], "big") >> (32 - MAC_BITS)


def pack_payload(kind: int, counter: int, amount_field: int, mac: int) -> int:
    return (kind << 61) | (counter << 45) | (amount_field << 29) | mac


def unpack_payload(payload: int) -> tuple[int, int, int, int]:
    """(kind, counter, amount field, mac) of a 63-bit payload."""
    return (
        payload >> 61,
        (payload >> 45) & 0xFFFF,
        (payload >> 29) & 0xFFFF,
        payload & ((1 << MAC_BITS) - 1),
    )


def payload_digits(payload: int) -> str:
    """The 20 digits of a payload: 19 zero-padded decimal digits and the Damm digit."""
    body = f"{payload:019d}"
    return body + damm_check_digit(body)


def group_digits(digits: str) -> str:
    """``1234 5678 9012 3456 7890``: groups of four for reading aloud."""
    return " ".join(digits[i : i + 4] for i in range(0, len(digits), 4))


def amount_field_for(token_class: TokenClass, value: int) -> tuple[int, int]:
    """(kind, amount field) of a class and its typed value; ``ValueError`` if the keypad
    cannot carry the value exactly."""
    if token_class is TokenClass.CREDIT:
        return KIND_CREDIT, encode_keypad_amount(value)
    carried = value
    if token_class is TokenClass.SET_MAX_POWER:
        if value % MAX_POWER_STEP_W:
            raise ValueError(f"the keypad carries maximum power in steps of 10 W: {value}")
        carried = value // MAX_POWER_STEP_W
    if not 0 <= carried <= MAX_MANAGEMENT_VALUE:
        raise ValueError(f"{token_class.name} value out of range: {value}")
    return KIND_MANAGEMENT, ((token_class - 1) << _VALUE_BITS) | carried


def issue_keypad(  # noqa: PLR0917  (the documented vending interface)
    key: bytes | MeterKey,
    meter_id: str,
    epoch: int,
    token_class: TokenClass,
    counter: int,
    amount: int,
) -> str:
    """The vending side: 20 digits for one purchase. ``key`` is the vending key (bytes) or
    the meter's own key. ``amount`` is the typed value of the class (minor units for
    credit, exactly representable: see :func:`round_down_to_keypad_amount`)."""
    meter_key = key if isinstance(key, MeterKey) else derive_meter_key(key, meter_id, epoch)
    check_epoch(epoch)
    if not 0 <= counter <= MAX_COUNTER:
        raise ValueError(f"counter must be 0..{MAX_COUNTER}: {counter}")
    if not value_in_range(token_class, amount, epoch):
        raise ValueError(f"{token_class.name} value out of range: {amount}")
    kind, field = amount_field_for(token_class, amount)
    mac = keypad_mac(meter_key, mac_message(meter_id, epoch, kind, counter, field))
    return payload_digits(pack_payload(kind, counter, field, mac))


def _typed_value(kind: int, field: int) -> tuple[TokenClass, int] | None:
    if kind == KIND_CREDIT:
        return TokenClass.CREDIT, decode_keypad_amount(field)
    sub_type, value = field >> _VALUE_BITS, field & MAX_MANAGEMENT_VALUE
    if kind != KIND_MANAGEMENT or sub_type + 1 > max(TokenClass):
        return None
    token_class = TokenClass(sub_type + 1)
    if token_class is TokenClass.SET_MAX_POWER:
        value *= MAX_POWER_STEP_W
    return token_class, value


def verify_keypad(
    digits: str, meter_id: str, meter_key: MeterKey, window: ReplayWindow
) -> Accepted | Rejected:
    """Check a typed token against this meter's key (of ``window.epoch``) and window.
    Pure: nothing changes; the caller records the window and credits together.
    Spaces and hyphens are ignored; a wrong number of digits is a TYPO."""
    meter_id_bytes(meter_id)  # a bad meter id is our fault, not the token's: ValueError
    entered = digits.translate(_SEPARATORS)
    if entered and not (entered.isascii() and entered.isdigit()):
        return Rejected(RejectReason.MALFORMED, "not decimal digits")
    if len(entered) != TOKEN_DIGITS:
        return Rejected(RejectReason.TYPO, f"{len(entered)} digits, not {TOKEN_DIGITS}")
    if not damm_valid(entered):
        return Rejected(RejectReason.TYPO, "check digit")
    payload = int(entered[:PAYLOAD_DIGITS])
    if payload >> PAYLOAD_BITS:
        return Rejected(RejectReason.MALFORMED, "payload above 63 bits")
    kind, counter, field, mac = unpack_payload(payload)
    expected = keypad_mac(meter_key, mac_message(meter_id, window.epoch, kind, counter, field))
    if not hmac.compare_digest(expected.to_bytes(4, "big"), mac.to_bytes(4, "big")):
        return Rejected(RejectReason.WRONG_METER_OR_FORGED)
    typed = _typed_value(kind, field)
    if typed is None:
        return Rejected(RejectReason.MALFORMED, f"reserved kind {kind} or sub-type")
    token_class, value = typed
    if not value_in_range(token_class, value, window.epoch):
        return Rejected(RejectReason.AMOUNT_OUT_OF_RANGE, f"{token_class.name} {value}")
    reason = window.check(counter)
    if reason is not None:
        return Rejected(reason, f"counter {counter}")
    return Accepted(meter_id, token_class, counter, value, window.epoch, Channel.KEYPAD)
