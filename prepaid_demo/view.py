"""The live view's model: rows fed by the gateway's MQTT messages, rendered as text.

Pure: messages go in (topic and payload bytes), rows and story lines come out; the
shell decides whether to redraw a table (a terminal) or print the story lines (a log).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

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
    broker_name: str
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
        """Take one message; return the story lines it makes (maybe none)."""
        parts = topic.split("/")
        try:
            data: dict[str, Any] = json.loads(payload)
        except ValueError:
            return [f"unreadable message on {topic}"]
        if not isinstance(data, dict):
            return [f"unreadable message on {topic}"]
        self.messages += 1
        if parts[-1] == "status":
            self.gateway_state = str(data.get("state", "unknown"))
            return [f"gateway {self.gateway} is {self.gateway_state}"]
        if len(parts) < 6 or parts[-3] != "meters":
            return []
        ts = data.get("ts")
        if isinstance(ts, str):
            when = datetime.fromisoformat(ts.replace("Z", "+00:00"))
            self.latest_ts = max(self.latest_ts or when, when)
        row = self.row(parts[-2])
        match parts[-1]:
            case "reading":
                row.power_w = data.get("power_w")
                if data.get("relay_closed") is not None and row.relay == "-":
                    row.relay = "closed" if data["relay_closed"] else "open"
            case "balance":
                row.balance = int(data["balance"])
                row.currency = str(data.get("currency", row.currency))
                row.credit_state = str(data["credit_state"])
                row.relay = str(data["relay"])
            case "event":
                return self._event(row, data)
        return []

    def _event(self, row: MeterRow, data: dict[str, Any]) -> list[str]:
        name = str(data.get("event", ""))
        reason = str(data.get("reason", ""))
        details = data.get("details") or {}
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
            line = (
                f"keypad top-up accepted: +{money(int(details.get('credited', 0)), row.currency)}"
            )
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


def render(
    model: ViewModel,
    *,
    header: str,
    footer: list[str],
    story: list[str],
    width: int = 100,
) -> str:
    """The whole screen as text: a header, one row per meter, the footer and the last
    story lines."""
    head = f"{'meter':<11} {'class':<11} {'balance':>15} {'credit state':<18} {'power':>8} {'relay':<7} last event"
    lines = [header, "", head, "-" * min(width, len(head) + 30)]
    for meter in sorted(model.rows):
        r = model.rows[meter]
        power = "-" if r.power_w is None else f"{r.power_w} W"
        cls = r.customer_class + ("*" if r.role == "protected" else "")
        lines.append(
            f"{r.meter:<11} {cls:<11} {money(r.balance, r.currency):>15} "
            f"{r.credit_state:<18} {power:>8} {r.relay:<7} {r.last_event}"[:width]
        )
    lines += ["", *footer, "", "story:", *story]
    return "\n".join(lines)
