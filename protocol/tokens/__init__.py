"""Top-up tokens: 20-digit keypad tokens and Ed25519-signed online tokens, their vending,
verification, replay window and keypad lockout. Pure code; the format is in docs/tokens.md."""

from protocol.tokens.amount import (
    decode_keypad_amount,
    encode_keypad_amount,
    round_down_to_keypad_amount,
)
from protocol.tokens.errors import RejectReason, TokenRejected
from protocol.tokens.keypad import group_digits, issue_keypad, verify_keypad
from protocol.tokens.keys import MeterKey, derive_meter_key
from protocol.tokens.lockout import (
    KeypadLockout,
    LockoutPolicy,
    lockout_after_failure,
    lockout_after_success,
    lockout_after_verdict,
    lockout_allows,
)
from protocol.tokens.online import issue_online, online_token_document, verify_online
from protocol.tokens.replay import ReplayWindow
from protocol.tokens.results import Accepted, Channel, Rejected, Verdict, accepted_or_raise
from protocol.tokens.token_class import TokenClass

__all__ = [
    "Accepted",
    "Channel",
    "KeypadLockout",
    "LockoutPolicy",
    "MeterKey",
    "RejectReason",
    "Rejected",
    "ReplayWindow",
    "TokenClass",
    "TokenRejected",
    "Verdict",
    "accepted_or_raise",
    "decode_keypad_amount",
    "derive_meter_key",
    "encode_keypad_amount",
    "group_digits",
    "issue_keypad",
    "issue_online",
    "lockout_after_failure",
    "lockout_after_success",
    "lockout_after_verdict",
    "lockout_allows",
    "online_token_document",
    "round_down_to_keypad_amount",
    "verify_keypad",
    "verify_online",
]
