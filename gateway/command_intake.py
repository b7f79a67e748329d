"""Headend commands arriving over MQTT: parse, authenticate, execute, answer.

Every command gets exactly one result, on the MQTT 5 response topic with the request's
correlation data, or on ``cmd/result`` for MQTT 3.1.1 clients. A malformed, oversized,
unsigned, stale or replayed command gets a clear error result and changes nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import JsonValue, ValidationError

from gateway.core.events import RemoteCommand, RemoteKind, TariffChanged
from gateway.core.json_forms import SettingsError, tariff_from_json
from gateway.mqtt_link import IncomingMessage, MqttLink
from gateway.service import Gateway
from gateway.sync import envelope
from gateway.token_intake import OnlineTopUp
from protocol.command_auth import CommandAuthError, load_public_keys, verify_command
from protocol.mqtt import (
    COMMAND,
    MAX_COMMAND_BYTES,
    CommandResult,
    RelayCommand,
    RereadCommand,
    ResendCommand,
    SignedCommand,
    TariffCommand,
    Topics,
    TopUpCommand,
    dump,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Answer:
    ok: bool
    error: str | None = None
    message: str = ""
    details: dict[str, JsonValue] = field(default_factory=dict)


@dataclass
class CommandIntake:
    gateway: Gateway
    topics: Topics
    clock: Callable[[], datetime]
    handled: int = 0

    def _headend_keys(self) -> Any:
        return load_public_keys(self.gateway.config.tokens.headend_public_keys)

    async def handle(self, link: MqttLink, msg: IncomingMessage) -> CommandResult:
        """Execute one incoming command and publish its result."""
        request_id: str | None = None
        correlation: str | None = None
        try:
            request_id, correlation, answer = await self._execute(link, msg)
        except Exception:
            log.exception("command on %s crashed", msg.topic)
            answer = Answer(False, "internal_error", "the gateway failed to carry out the command")
        self.handled += 1
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
        topic = msg.response_topic or self.topics.fallback_result
        await link.publish(topic, dump(result), correlation_data=msg.correlation_data)
        return result

    async def _execute(
        self, link: MqttLink, msg: IncomingMessage
    ) -> tuple[str | None, str | None, Answer]:
        if len(msg.payload) > MAX_COMMAND_BYTES:
            return None, None, Answer(False, "too_large", f"over {MAX_COMMAND_BYTES} bytes")
        try:
            topic_meter = self.topics.meter_of_command_topic(msg.topic)
        except ValueError as exc:
            return None, None, Answer(False, "malformed", str(exc))
        try:
            raw = json.loads(msg.payload)
        except (ValueError, UnicodeDecodeError):
            return None, None, Answer(False, "malformed", "not JSON")
        except RecursionError:
            return None, None, Answer(False, "malformed", "JSON nested too deeply")
        request_id = (
            raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else None
        )
        correlation = raw.get("correlation") if isinstance(raw, dict) else None
        correlation = correlation if isinstance(correlation, str) else None
        try:
            cmd = COMMAND.validate_python(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            return request_id, correlation, Answer(False, "malformed", f"{where}: {err['msg']}")
        meter = getattr(cmd, "meter", None) or topic_meter
        if topic_meter is not None and meter != topic_meter:
            return cmd.id, correlation, Answer(False, "malformed", "meter differs from the topic's")
        if meter is None:
            return cmd.id, correlation, Answer(False, "malformed", "send it to meters/{id}/cmd")
        if meter not in self.gateway.meters:
            return cmd.id, correlation, Answer(False, "unknown_meter", f"no meter {meter}")
        now = self.clock()
        if isinstance(cmd, SignedCommand):
            try:
                verify_command(raw, self._headend_keys(), now, cmd.expires)
            except CommandAuthError as exc:
                return cmd.id, correlation, Answer(False, exc.failure.value, str(exc))
            if not await self.gateway.store.claim_command_async(cmd.id, cmd.expires, now):
                return cmd.id, correlation, Answer(False, "replayed_command", "already executed")
        return cmd.id, correlation, await self._run(link, cmd, meter, now)

    async def _run(self, link: MqttLink, cmd: object, meter: str, now: datetime) -> Answer:
        gw = self.gateway
        match cmd:
            case TopUpCommand(token=token):
                result = await gw.submit(OnlineTopUp(meter, token, now))
                outcome = result.outcome
                assert outcome is not None
                details: dict[str, JsonValue] = {"credited": outcome.credited}
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
                    return Answer(False, "malformed", exc.problem[:500])
                await gw.submit(TariffChanged(meter, parsed, now, activates_at))
                return Answer(True, None, "tariff scheduled")
            case RereadCommand():
                gw.meters[meter].poller.poll_now(meter)
                return Answer(True, None, "read scheduled")
            case ResendCommand(from_seq=from_seq):
                rows = gw.store.outbox_since(meter, from_seq)
                for row in rows:
                    await link.publish(
                        self.topics.meter(row.meter_id, row.kind),
                        envelope(self.topics.gateway_id, row),
                    )
                return Answer(True, None, f"resent {len(rows)} messages", {"resent": len(rows)})
        return Answer(False, "malformed", "unknown command")
