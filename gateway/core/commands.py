"""What the core asks the shell to do. Every relay change carries its ``Reason``."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

from gateway.core.frozen import quick_init
from protocol.messages import JsonValue
from protocol.tokens.errors import TokenRefusal


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a decision was taken, so a cut-off can be explained to the customer."""

    rule: str
    balance: int
    window: str | None = None
    detail: str = ""

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "rule": self.rule,
            "balance": self.balance,
            "window": self.window,
            "detail": self.detail,
        }


class DisplayCode(IntEnum):
    """What the meter's display shows (PE-1 holding register 1)."""

    NORMAL = 0
    TOKEN_ACCEPTED = 1
    TOKEN_REJECTED = 2
    OVER_MAX_BALANCE = 3
    LOW_CREDIT = 4
    VERY_LOW_CREDIT = 5
    EMERGENCY_CREDIT = 6
    CREDIT_EXHAUSTED = 7
    DISCONNECTED = 8
    PRESS_BUTTON = 9
    PROTECTED = 10
    REMOTE_DISCONNECTED = 11
    #: a test token was typed or sent: the display works and the meter is reached
    TEST_TOKEN = 12


@dataclass(frozen=True, slots=True)
class SetRelay:
    meter_id: str
    closed: bool
    reason: Reason
    #: the same command again, because the relay disagrees: the shell paces these
    retry: bool = False


@quick_init
@dataclass(frozen=True, slots=True)
class WriteDisplay:
    meter_id: str
    code: DisplayCode
    credit: int


@dataclass(frozen=True, slots=True)
class SetLoadLimit:
    """Write the meter's load limit (PE-1 holding register 4, W, 0 = none) and read it
    back: a set-maximum-power token."""

    meter_id: str
    watts: int


@dataclass(frozen=True, slots=True)
class SetAlarm:
    """The meter's low-credit buzzer/LED (PE-1 holding register 5, bit 0)."""

    meter_id: str
    on: bool


PublishKind = Literal["reading", "balance", "event"]


@quick_init
@dataclass(frozen=True, slots=True)
class Publish:
    """A message for the headend. The body holds neither ``seq`` nor ``ts``: the store
    assigns them when it writes the outbox row."""

    meter_id: str
    kind: PublishKind
    body: dict[str, JsonValue]


@dataclass(frozen=True, slots=True)
class TopUpDecision:
    """Whether a verified token was applied: its money credited, or its management
    command carried out (``credited`` 0). Only an accepted token's counter is recorded as
    used (in the same transaction as the credit), so a refused one (over the maximum
    balance) can be entered again later."""

    meter_id: str
    token_id: str
    accepted: bool
    reason: Literal["accepted"] | TokenRefusal
    credited: int = 0
    debt_recovered: int = 0


Command = SetRelay | WriteDisplay | SetAlarm | Publish | TopUpDecision | SetLoadLimit
