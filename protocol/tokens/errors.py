"""Why a token was refused: one reason per rejection, and the exception form of it."""

from __future__ import annotations

from enum import StrEnum
from typing import TypeAlias

from protocol.errors import ProtocolError


class RejectReason(StrEnum):
    """The one reason a token is refused. Only ``TYPO`` is not an attack."""

    TYPO = "typo"
    MALFORMED = "malformed"
    WRONG_METER_OR_FORGED = "wrong_meter_or_forged"
    REPLAYED = "replayed"
    TOO_OLD = "too_old"
    EXPIRED = "expired"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    AMOUNT_OUT_OF_RANGE = "amount_out_of_range"

    @property
    def counts_toward_lockout(self) -> bool:
        """A mistyped digit cannot be accepted by chance, so it costs the customer nothing."""
        return self is not RejectReason.TYPO


class GatewayRefusal(StrEnum):
    """A refusal the gateway adds around verification: the keypad is locked, or the token
    is genuine but this meter cannot take it now (its counter stays unused)."""

    LOCKED_OUT = "locked_out"
    OVER_MAX_BALANCE = "over_max_balance"
    KEY_NOT_HELD = "key_not_held"
    NO_LOAD_LIMIT = "no_load_limit"
    INVALID_EMERGENCY_CREDIT = "invalid_emergency_credit"
    LOAD_LIMIT_OUT_OF_RANGE = "load_limit_out_of_range"


#: Why a token was refused: the token's own fault, or what the gateway adds.
TokenRefusal: TypeAlias = RejectReason | GatewayRefusal

#: Why a token was refused, one line each (docs/mqtt.md renders them, and
#: scripts/export_schemas.py fails unless every member of both enumerations has its line).
REASON_MEANINGS: dict[TokenRefusal, str] = {
    RejectReason.TYPO: "a mistyped keypad token (its check digits fail): costs the customer "
    "no lockout guess",
    RejectReason.MALFORMED: "not a token of any known form",
    RejectReason.WRONG_METER_OR_FORGED: "made for another meter, or forged (the meter's key "
    "does not verify it)",
    RejectReason.REPLAYED: "already credited (the same purchase counter or token id)",
    RejectReason.TOO_OLD: "its counter is below the meter's window: older purchases cannot "
    "be told from replays",
    RejectReason.EXPIRED: "an online token past its validity",
    RejectReason.UNKNOWN_KEY: "signed by a vending key the gateway does not know",
    RejectReason.BAD_SIGNATURE: "an online token whose signature does not verify",
    RejectReason.AMOUNT_OUT_OF_RANGE: "an amount the token format or the meter's currency "
    "does not allow",
    GatewayRefusal.LOCKED_OUT: "the keypad is locked after too many wrong tokens (keypad "
    "only; `details.detail` says until when)",
    GatewayRefusal.OVER_MAX_BALANCE: "crediting it would take the balance over the meter's maximum",
    GatewayRefusal.KEY_NOT_HELD: "a key change to an epoch whose key is not installed on the "
    "gateway (`meter-provision keys install`); the token's counter stays unused",
    GatewayRefusal.NO_LOAD_LIMIT: "set maximum power on a meter whose map has no load limit "
    "register; the token's counter stays unused",
    GatewayRefusal.INVALID_EMERGENCY_CREDIT: "an emergency credit the meter's settings cannot "
    "take; the token's counter stays unused",
    GatewayRefusal.LOAD_LIMIT_OUT_OF_RANGE: "set maximum power above what the meter's load "
    "limit register holds (PE-1: 65,535 W); the token's counter stays unused",
}


class TokenRejected(ProtocolError):  # noqa: N818  (the name STYLE.md gives it)
    """A token refused for ``reason`` (the token's fault, never ours)."""

    def __init__(self, reason: RejectReason, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else str(reason))
