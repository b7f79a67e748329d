"""Headend commands arriving over MQTT: parse, authenticate, execute, answer.

Every command gets exactly one result, on the MQTT 5 response topic with the request's
correlation data, or on ``cmd/result`` for MQTT 3.1.1 clients. A malformed, oversized,
unsigned, stale or replayed command gets a clear error result and changes nothing.

Each message is answered inside a boundary (:meth:`CommandIntake.answer`): whatever it
holds, the gateway answers, logs what went wrong and goes on. A response topic is
checked before anything runs (no wildcards, within the configured result topics), and a
result the broker refuses is logged, never the end of the session.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import JsonValue, ValidationError

from gateway.core.events import ManagementTokenAccepted, RemoteCommand, RemoteKind, TariffChanged
from gateway.core.token_intake import OnlineTopUp
from gateway.forms import SettingsError, tariff_from_json
from gateway.mqtt_link import IncomingMessage, MqttLink, PublishRefusedError
from gateway.resend import ResendQueue, ResendRateLimitedError
from gateway.service import Gateway
from gateway.store import StorageUnavailableError, StoreError
from protocol.command_auth import CommandAuthError, load_public_keys, verify_command
from protocol.command_errors import CommandError
from protocol.mqtt import (
    COMMAND,
    MAX_COMMAND_BYTES,
    SIGNED_COMMANDS,
    CommandResult,
    RelayCommand,
    RereadCommand,
    ResendCommand,
    SignedCommand,
    TariffCommand,
    Topics,
    TopUpCommand,
    dump,
    topic_matches,
    topic_name_problem,
)

log = logging.getLogger(__name__)

#: What a signed command carries as its proof: one without ``sig`` and missing nothing but
#: these is ``unsigned`` (any other fault, a missing ``gateway`` beside a ``sig`` among them,
#: is ``malformed``).
PROOF = frozenset({"sig", "key_id", "expires", "gateway"})


@dataclass(frozen=True, slots=True)
class Answer:
    ok: bool
    error: str | None = None
    message: str = ""
    details: dict[str, JsonValue] = field(default_factory=dict)


STORAGE_UNAVAILABLE = Answer(
    False,
    CommandError.STORAGE_UNAVAILABLE,
    "the gateway cannot store anything now: send it again later",
)


@dataclass
class CommandIntake:
    gateway: Gateway
    topics: Topics
    clock: Callable[[], datetime]
    resends: ResendQueue
    #: MQTT 5 response topics (filters) results may go to, besides ``cmd/result``
    response_topics: Sequence[str] = ()
    #: commands whose handling raised unexpectedly (answered ``internal_error``)
    internal_errors: int = 0

    def _headend_keys(self) -> Any:
        return load_public_keys(self.gateway.config.tokens.headend_public_keys)

    def _response_topic_problem(self, topic: str) -> str | None:
        problem = topic_name_problem(topic)
        if problem is not None:
            return problem
        if topic == self.topics.fallback_result or any(
            topic_matches(f, topic) for f in self.response_topics
        ):
            return None
        allowed = ", ".join([*self.response_topics, self.topics.fallback_result])
        return f"is outside the gateway's result topics ({allowed})"

    async def answer(self, link: MqttLink, msg: IncomingMessage) -> CommandResult:
        """Carry out one incoming command and publish its result (the boundary: nothing
        a message holds ends the session or the gateway)."""
        request_id: str | None = None
        correlation: str | None = None
        topic = self.topics.fallback_result
        problem = None
        if msg.response_topic is not None:
            problem = self._response_topic_problem(msg.response_topic)
            if problem is None:
                topic = msg.response_topic
        try:
            if problem is not None:
                request_id, correlation = _request_ids(msg.payload)
                answer = Answer(False, CommandError.BAD_RESPONSE_TOPIC, f"response topic {problem}")
            else:
                request_id, correlation, answer = await self._check_and_carry_out(msg, topic)
        except StorageUnavailableError:
            request_id, correlation = _request_ids(msg.payload)
            answer = STORAGE_UNAVAILABLE
        except Exception:
            self.internal_errors += 1
            log.exception("command on %s failed (answered internal_error)", msg.topic)
            request_id, correlation = _request_ids(msg.payload)
            answer = Answer(
                False, CommandError.INTERNAL_ERROR, "the gateway failed to carry out the command"
            )
        result = CommandResult(
            gateway=self.topics.gateway_id,
            id=request_id,
            ok=answer.ok,
            error=answer.error,
            message=answer.message,
            correlation=correlation,
            details=answer.details,
            ts=self.clock(),
        )
        try:
            await link.publish(topic, dump(result), correlation_data=msg.correlation_data)
        except PublishRefusedError as exc:
            log.warning("result of command %s to %r refused: %s", request_id, topic[:200], exc)
        return result

    async def _check_and_carry_out(
        self, msg: IncomingMessage, result_topic: str
    ) -> tuple[str | None, str | None, Answer]:
        """Parse, authenticate and carry out one command (the request id and correlation
        it names, and the answer); ``result_topic`` names the requester."""
        if len(msg.payload) > MAX_COMMAND_BYTES:
            return (
                None,
                None,
                Answer(False, CommandError.TOO_LARGE, f"over {MAX_COMMAND_BYTES} bytes"),
            )
        try:
            raw = json.loads(msg.payload)
        except (ValueError, UnicodeDecodeError):
            return None, None, Answer(False, CommandError.MALFORMED, "not JSON")
        except RecursionError:
            return None, None, Answer(False, CommandError.MALFORMED, "JSON nested too deeply")
        request_id, correlation = _request_ids_in(raw)
        try:
            topic_meter = self.topics.meter_of_command_topic(msg.topic)
        except ValueError as exc:
            # Answered with the request's id, so a headend can tell which one it was.
            return request_id, correlation, Answer(False, CommandError.MALFORMED, str(exc)[:300])
        try:
            cmd = COMMAND.validate_python(raw)
        except ValidationError as exc:
            missing = {str(e["loc"][-1]) for e in exc.errors() if e["type"] == "missing"}
            only_proof = all(e["type"] == "missing" for e in exc.errors()) and missing <= PROOF
            name = raw.get("cmd") if isinstance(raw, dict) else None
            if (
                isinstance(name, str)
                and name in SIGNED_COMMANDS
                and "sig" in missing
                and only_proof
            ):
                unsigned = Answer(False, CommandError.UNSIGNED, f"{raw['cmd']} must be signed")
                return request_id, correlation, unsigned
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            return (
                request_id,
                correlation,
                Answer(False, CommandError.MALFORMED, f"{where}: {err['msg']}"),
            )
        meter = getattr(cmd, "meter", None) or topic_meter
        if topic_meter is not None and meter != topic_meter:
            return (
                cmd.id,
                correlation,
                Answer(False, CommandError.MALFORMED, "meter differs from the topic's"),
            )
        if meter is None:
            return (
                cmd.id,
                correlation,
                Answer(
                    False, CommandError.MALFORMED, "name the meter (meter) or use meters/{id}/cmd"
                ),
            )
        if meter not in self.gateway.meters:
            return (
                cmd.id,
                correlation,
                Answer(False, CommandError.UNKNOWN_METER, f"no meter {meter}"),
            )
        now = self.clock()
        if isinstance(cmd, SignedCommand):
            try:
                verify_command(raw, self._headend_keys(), now, cmd.expires)
            except CommandAuthError as exc:
                return cmd.id, correlation, Answer(False, exc.failure.value, str(exc))
            if cmd.gateway != self.topics.gateway_id:
                detail = f"signed for gateway {cmd.gateway}, this is {self.topics.gateway_id}"
                return cmd.id, correlation, Answer(False, CommandError.WRONG_GATEWAY, detail)
            if not await self.gateway.store.claim_command_async(cmd.id, cmd.expires, now):
                return (
                    cmd.id,
                    correlation,
                    Answer(False, CommandError.REPLAYED_COMMAND, "already executed"),
                )
            try:
                return cmd.id, correlation, await self._carry_out(cmd, meter, now, result_topic)
            except StorageUnavailableError:
                # Not carried out: the headend may send it again once the store recovers.
                with contextlib.suppress(StoreError):
                    await self.gateway.store.release_command_async(cmd.id)
                raise
        return cmd.id, correlation, await self._carry_out(cmd, meter, now, result_topic)

    async def _carry_out(self, cmd: object, meter: str, now: datetime, result_topic: str) -> Answer:
        gw = self.gateway
        match cmd:
            case TopUpCommand(token=token):
                result = await gw.submit(OnlineTopUp(meter, token, now))
                outcome = result.outcome
                assert outcome is not None
                details: dict[str, JsonValue] = {"credited": outcome.credited}
                if outcome.accepted and isinstance(outcome.event, ManagementTokenAccepted):
                    details["class"] = outcome.event.token_class
                    return Answer(True, None, "carried out", details)
                if outcome.accepted:
                    return Answer(True, None, "credited", details)
                return Answer(False, outcome.verdict, outcome.detail, details)
            case RelayCommand(cmd=kind, reason=reason, id=request_id):
                await gw.submit(RemoteCommand(meter, RemoteKind(kind), reason, now, request_id))
                state = gw.meters[meter].state
                return Answer(
                    True,
                    None,
                    f"{kind} applied",
                    {"credit_state": str(state.credit), "relay": state.relay_word()},
                )
            case TariffCommand(tariff=tariff, activates_at=activates_at):
                try:
                    parsed = tariff_from_json(tariff)
                except SettingsError as exc:
                    return Answer(False, CommandError.MALFORMED, exc.problem[:500])
                await gw.submit(TariffChanged(meter, parsed, now, activates_at))
                return Answer(True, None, "tariff scheduled")
            case RereadCommand():
                gw.meters[meter].poller.poll_now(meter)
                return Answer(True, None, "read scheduled")
            case ResendCommand(from_seq=from_seq):
                try:
                    plan = self.resends.plan(meter, from_seq, result_topic)
                except ResendRateLimitedError as exc:
                    retry: dict[str, JsonValue] = {"retry_after_s": round(exc.retry_after_s, 1)}
                    return Answer(False, CommandError.RATE_LIMITED, str(exc), retry)
                details = {"resent": plan.count, "next_seq": plan.next_seq}
                return Answer(True, None, f"resending {plan.count} messages", details)
        return Answer(False, CommandError.MALFORMED, "unknown command")


def _request_ids_in(raw: object) -> tuple[str | None, str | None]:
    """The request id and 3.1.1 correlation a command names, if it can be read."""
    if not isinstance(raw, dict):
        return None, None
    request_id, correlation = raw.get("id"), raw.get("correlation")
    return (
        request_id if isinstance(request_id, str) else None,
        correlation if isinstance(correlation, str) else None,
    )


def _request_ids(payload: bytes) -> tuple[str | None, str | None]:
    if len(payload) > MAX_COMMAND_BYTES:
        return None, None
    try:
        return _request_ids_in(json.loads(payload))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None, None
