"""Why a token was refused: one reason per rejection, and the exception form of it."""

from __future__ import annotations

from enum import StrEnum

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


class TokenRejected(ProtocolError):  # noqa: N818  (the name STYLE.md gives it)
    """A token refused for ``reason`` (the token's fault, never ours)."""

    def __init__(self, reason: RejectReason, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else str(reason))
