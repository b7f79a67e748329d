"""The live view's model: rows fed by the gateway's MQTT messages.

Pure: messages go in (topic and payload bytes), rows and story lines come out; the
shell decides whether to redraw a screen (a terminal, laid out by prepaid_demo.screen)
or print the story lines (a log).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from pydantic import ValidationError

from protocol.messages import EventMessage
from protocol.mqtt import StatusMessage, decode_message

#: Credit-state changes worth a line of the story, and how the line reads.
STATE_LINES = {
    "low_credit": "low credit warning",
    "very_low_credit": "very low credit warning",
    "emergency_credit": "emergency credit in use",
    "exhausted": "credit exhausted",
}
EVENT_LINES = {
    "relay_opened": "DISCONNECTED",
    "relay_closed": "RECONNECTED",
    "token_accepted": "keypad top-up accepted",
    "communication_lost": "communication lost",
    "communication_restored": "communication restored",
    "relay_mismatch": "relay position mismatch",
    "keypad_lockout_alarm": "keypad lockout alarm",
}


def money(minor: int | None, currency: str = "KES") -> str:
    """Minor units for display only: ``-1250`` is ``-12.50 KES``."""
    if minor is None:
        return "-"
    sign = "-" if minor < 0 else ""
    return f"{sign}{abs(minor) // 100:,}.{abs(minor) % 100:02d} {currency}"


@dataclass
class MeterRow:
    meter: str
    customer_class: str = ""
    role: str = ""
    balance: int | None = None
    currency: str = "KES"
    credit_state: str = "-"
    power_w: int | None = None
    relay: str = "-"
    last_event: str = ""


@dataclass
class ViewModel:
    """Everything the view shows, from the messages of one gateway's topic tree."""

    gateway: str
    rows: dict[str, MeterRow] = field(default_factory=dict)
    gateway_state: str = "unknown"
    latest_ts: datetime | None = None
    #: meters on which a token was refused as a replay
    replays_rejected: set[str] = field(default_factory=set)
    messages: int = 0

    def row(self, meter: str) -> MeterRow:
        if meter not in self.rows:
            self.rows[meter] = MeterRow(meter)
        return self.rows[meter]

    def apply(self, topic: str, payload: bytes) -> list[str]:
        """Take one message; return the story lines it makes (maybe none). A payload that
        does not match the published contract is one line saying so, and changes nothing."""
        parts = topic.split("/")
        if parts[-1] not in ("status", "reading", "balance", "event"):
            return []  # commands and their results are the headend's business
        try:
            if parts[-1] == "status":
                status = StatusMessage.model_validate_json(payload)
            else:
                message = decode_message(payload)
        except ValidationError:
            return [f"message on {topic} breaks the contract: ignored"]
        self.messages += 1
        if parts[-1] == "status":
            if status.state == self.gateway_state:
                return []  # a periodic health update
            self.gateway_state = status.state
            return [f"gateway {status.gateway} is {status.state}"]
        self.latest_ts = max(self.latest_ts or message["ts"], message["ts"])
        row = self.row(message["meter"])
        if message["kind"] == "reading":
            row.power_w = message["power_w"]
            if message["relay_closed"] is not None and row.relay == "-":
                row.relay = "closed" if message["relay_closed"] else "open"
        elif message["kind"] == "balance":
            row.balance = message["balance"]
            row.currency = message["currency"]
            row.credit_state = message["credit_state"]
            row.relay = message["relay"]
        else:
            return self._event(row, message)
        return []

    def _event(self, row: MeterRow, message: EventMessage) -> list[str]:
        name, reason, details = message["event"], message["reason"], message["details"]
        line: str | None
        if name == "credit_state_changed":
            target = str(details.get("to", ""))
            row.credit_state = target or row.credit_state
            line = STATE_LINES.get(target)
            if line is None:
                row.last_event = f"state -> {target}"
                return []
            if target == "exhausted" and reason:
                line = f"{line} ({reason})"
        elif name == "token_accepted":
            credited = details.get("credited")
            amount = money(credited, row.currency) if isinstance(credited, int) else "?"
            line = f"{details.get('channel') or 'keypad'} top-up accepted: +{amount}"
        elif name == "token_rejected":
            replay = reason == "replayed"
            line = ("replay rejected" if replay else "token rejected") + f" ({reason})"
            if replay:
                self.replays_rejected.add(row.meter)
        elif name in EVENT_LINES:
            line = f"{EVENT_LINES[name]} ({reason})" if reason else EVENT_LINES[name]
        else:
            line = f"{name} ({reason})"
        row.last_event = line
        return [f"{row.meter} {line}"]
