"""Write every MQTT payload's JSON Schema into docs/schemas/, and every enumeration a
headend sees into docs/mqtt.md's generated blocks (tests check both are current)."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import get_args

from gateway.core.states import CREDIT_STATE_MEANINGS, CreditState
from protocol import command_errors, event_kinds
from protocol.command_auth import CommandAuthFailure
from protocol.messages import RELAY_MEANINGS, RelayWord
from protocol.mqtt import (
    COMMAND_MEANINGS,
    COMMAND_MODELS,
    SignedCommand,
    TopUpCommand,
    command_names,
    json_schemas,
)
from protocol.tokens.errors import REASON_MEANINGS, GatewayRefusal, RejectReason

PAGE = Path(__file__).resolve().parent.parent / "docs" / "mqtt.md"
#: ``<!-- generated: NAME -->`` ... ``<!-- /generated -->``
BLOCK = re.compile(r"(<!-- generated: ([a-z-]+) -->\n)(.*?)(<!-- /generated -->)", re.S)
#: fields every command has (described once, above the table)
COMMON_FIELDS = {"v", "id", "correlation", "cmd"}
SIGNATURE_FIELDS = ("gateway", "key_id", "expires", "sig")


def render() -> dict[str, str]:
    """File name -> file text for every schema."""
    return {
        f"{name}.schema.json": json.dumps(schema, indent=2, sort_keys=True) + "\n"
        for name, schema in json_schemas().items()
    }


def _bullets(pairs: Iterable[tuple[str, str]]) -> str:
    return "".join(f"- `{value}`: {meaning}\n" for value, meaning in pairs)


def _complete(name: str, values: Iterable[str], meanings: dict[str, str]) -> None:
    """Every value has its one line, and no line names a value the code lacks."""
    values = [str(v) for v in values]
    if set(values) != set(meanings):
        missing, extra = set(values) - set(meanings), set(meanings) - set(values)
        raise SystemExit(f"{name}: no meaning for {sorted(missing)}; unknown {sorted(extra)}")


def _commands() -> str:
    rows = ["| `cmd` | fields | signed | what it does |", "|---|---|---|---|"]
    for model in COMMAND_MODELS:
        fields = [f for f in model.model_fields if f not in COMMON_FIELDS]
        signed = "yes" if issubclass(model, SignedCommand) else "no"
        if model is TopUpCommand:
            signed = "the token is"
        plain = [f for f in fields if f not in SIGNATURE_FIELDS]
        if signed == "yes":
            plain += list(SIGNATURE_FIELDS)
        for name in command_names(model):
            shown = ", ".join(f"`{f}`" for f in plain)
            rows.append(f"| `{name}` | {shown} | {signed} | {COMMAND_MEANINGS[name]} |")
    return "\n".join(rows) + "\n"


def vocabulary() -> dict[str, str]:
    """Block name -> the Markdown docs/mqtt.md shows there."""
    names = [n for model in COMMAND_MODELS for n in command_names(model)]
    _complete("commands", names, COMMAND_MEANINGS)
    errors = {str(k): v for k, v in command_errors.MEANINGS.items()}
    _complete("command errors", command_errors.CommandError, errors)
    if not set(CommandAuthFailure) <= set(command_errors.CommandError):
        raise SystemExit("a CommandAuthFailure is not a CommandError")
    events = {str(k): v for k, v in event_kinds.MEANINGS.items()}
    _complete("event kinds", event_kinds.EventKind, events)
    states = {str(k): v for k, v in CREDIT_STATE_MEANINGS.items()}
    _complete("credit states", CreditState, states)
    _complete("relay words", get_args(RelayWord), RELAY_MEANINGS)
    reasons = {str(k): v for k, v in REASON_MEANINGS.items()}
    _complete("token reasons", [*RejectReason, *GatewayRefusal], reasons)
    return {
        "commands": _commands(),
        "command-errors": _bullets(errors.items()),
        "token-reasons": _bullets(reasons.items()),
        "event-kinds": _bullets(events.items()),
        "credit-states": _bullets(states.items()),
        "relay-states": _bullets(RELAY_MEANINGS.items()),
    }


def refreshed(page: str) -> str:
    """``page`` with every generated block rendered anew (an unknown block name fails)."""
    blocks = vocabulary()

    def fill(m: re.Match[str]) -> str:
        if m.group(2) not in blocks:
            raise SystemExit(f"docs/mqtt.md: no generated block {m.group(2)!r}")
        return m.group(1) + blocks[m.group(2)] + m.group(4)

    return BLOCK.sub(fill, page)


def main() -> int:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/schemas")
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (folder / name).write_text(text)
        print(folder / name)
    PAGE.write_text(refreshed(PAGE.read_text()))
    print(PAGE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
