"""Every ``error`` a command result can carry besides a token's reasons: the code and what
it means, in one place (docs/mqtt.md renders :data:`MEANINGS`; a test fails on drift, and
another produces each code against a running gateway)."""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class CommandError(StrEnum):
    MALFORMED = "malformed"
    TOO_LARGE = "too_large"
    UNKNOWN_METER = "unknown_meter"
    BAD_RESPONSE_TOPIC = "bad_response_topic"
    UNSIGNED = "unsigned"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    WRONG_GATEWAY = "wrong_gateway"
    REPLAYED_COMMAND = "replayed_command"
    RATE_LIMITED = "rate_limited"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    INTERNAL_ERROR = "internal_error"


MEANINGS: Final[dict[CommandError, str]] = {
    CommandError.MALFORMED: "not JSON, or wrong fields or types (`message` names the "
    "field), or a `meter` that differs from the topic's, or none on the gateway's topic",
    CommandError.TOO_LARGE: "over 16 KiB: refused unread",
    CommandError.UNKNOWN_METER: "no such meter on this gateway",
    CommandError.BAD_RESPONSE_TOPIC: "the MQTT 5 response topic has a wildcard or is "
    "outside `mqtt.response_topics`: answered on `cmd/result`, not carried out",
    CommandError.UNSIGNED: "a command that must be signed came without `sig`",
    CommandError.UNKNOWN_KEY: "`key_id` names no key in the gateway's `tokens.headend_public_keys`",
    CommandError.BAD_SIGNATURE: "the signature does not verify over the command's bytes",
    CommandError.EXPIRED: "`expires` has passed, or lies more than 24 h ahead",
    CommandError.WRONG_GATEWAY: "signed for another gateway (`gateway`)",
    CommandError.REPLAYED_COMMAND: "a signed command with this `id` was already carried "
    "out (a re-sent `topup` answers its token's reason, `replayed`, instead)",
    CommandError.RATE_LIMITED: "a `resend` beyond what one requester (one response topic, "
    "or `cmd/result` for MQTT 3.1.1 clients) may ask for: nothing queued; "
    "`details.retry_after_s` says when its budget pays for it",
    CommandError.STORAGE_UNAVAILABLE: "the gateway cannot store anything now (a full "
    "disk, a read-only file system): nothing was done, send it again later",
    CommandError.INTERNAL_ERROR: "a fault of the gateway's, logged there and counted in "
    "the status's `health.internal_errors`: nothing was done",
}
