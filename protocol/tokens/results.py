"""What a verification returns: an accepted token with its fields, or one reason to refuse."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from protocol.tokens.errors import RejectReason, TokenRejected
from protocol.tokens.token_class import TokenClass


class Channel(StrEnum):
    KEYPAD = "keypad"
    ONLINE = "online"


def token_id_for(meter_id: str, epoch: int, counter: int) -> str:
    """The id under which a purchase is applied: the same for both channels, so one
    purchase delivered twice is one token id."""
    return f"{meter_id}:{epoch}:{counter}"


@dataclass(frozen=True, slots=True)
class Accepted:
    """A genuine, fresh token. ``amount`` is minor units for credit and emergency credit,
    W for maximum power, the tamper mask, the new epoch or the test code otherwise.
    ``currency`` and ``txn_id`` (hex) come with online tokens only; the gateway must check
    the currency against its own."""

    meter_id: str
    token_class: TokenClass
    counter: int
    amount: int
    epoch: int
    channel: Channel
    currency: str | None = None
    txn_id: str | None = None

    @property
    def token_id(self) -> str:
        return token_id_for(self.meter_id, self.epoch, self.counter)


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: RejectReason
    detail: str = ""

    @property
    def counts_toward_lockout(self) -> bool:
        return self.reason.counts_toward_lockout

    def to_exception(self) -> TokenRejected:
        return TokenRejected(self.reason, self.detail)


Verdict = Accepted | Rejected


def accepted_or_raise(result: Accepted | Rejected) -> Accepted:
    """The exception form: the accepted token, or :class:`TokenRejected` with the reason."""
    if isinstance(result, Rejected):
        raise result.to_exception()
    return result
