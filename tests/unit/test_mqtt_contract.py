"""The MQTT contract: topics are built and parsed exactly, payload models validate, commands reject garbage with a typed error, and docs/schemas is current."""

from __future__ import annotations

import contextlib
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from protocol.mqtt import (
    COMMAND,
    RelayCommand,
    ResendCommand,
    Topics,
    TopUpCommand,
    decode_message,
    signing_bytes,
)
from protocol.tokens.errors import REASON_MEANINGS, GatewayRefusal, RejectReason
from scripts import export_schemas
from scripts.export_schemas import BLOCK, PAGE, refreshed, render, vocabulary
from scripts.gen_config_reference import DOC, updated

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def test_topic_tree() -> None:
    t = Topics("gw-1")
    assert t.status == "prepaid/v1/gw-1/status"
    assert t.meter("m7", "balance") == "prepaid/v1/gw-1/meters/m7/balance"
    assert t.meter_of_command_topic("prepaid/v1/gw-1/meters/m7/cmd") == "m7"
    assert t.meter_of_command_topic("prepaid/v1/gw-1/cmd") is None
    for bad in ("prepaid/v1/gw-2/cmd", "prepaid/v1/gw-1/meters/a/b/cmd", "x"):
        with pytest.raises(ValueError, match="not a command topic"):
            t.meter_of_command_topic(bad)
    with pytest.raises(ValueError, match="gateway id"):
        Topics("gw/1")


@pytest.mark.parametrize(
    "payload",
    [
        b'{"v":1,"gateway":"gw-1","meter":"m1","seq":0,"ts":"2026-11-28T12:00:00.000Z",'
        b'"kind":"event","event":"x","reason":"y"}',
        b'{"v":1,"gateway":"gw/1","meter":"m1","seq":1,"ts":"2026-11-28T12:00:00.000Z",'
        b'"kind":"event","event":"x","reason":"y"}',
        b'{"v":1,"gateway":"gw-1","meter":"m1","seq":1,"ts":"2026-11-28T12:00:00",'
        b'"kind":"event","event":"x","reason":"y"}',
        b'{"v":1,"gateway":"gw-1","meter":"m1","seq":1,"ts":"2026-11-28T12:00:00.000Z",'
        b'"kind":"reading","energy_import_wh":-1,"charged":0}',
        b'{"v":1,"gateway":"gw-1","meter":"m1","seq":1,"ts":"2026-11-28T12:00:00.000Z",'
        b'"kind":"balance","balance":1,"currency":"KES","credit_state":"normal",'
        b'"relay":"ajar"}',
        b'{"v":1,"gateway":"gw-1","meter":"m1","seq":1,"ts":"2026-11-28T12:00:00.000Z",'
        b'"kind":"event","event":"x","reason":"y","extra":1}',
    ],
)
def test_meter_messages_off_their_schema_are_refused(payload: bytes) -> None:
    with pytest.raises(ValidationError):
        decode_message(payload)


def test_commands_parse_by_kind() -> None:
    cmd = COMMAND.validate_json(b'{"v":1,"id":"r1","cmd":"topup","token":"abc"}')
    assert isinstance(cmd, TopUpCommand)
    cmd = COMMAND.validate_json(b'{"v":1,"id":"r2","cmd":"resend","meter":"m1","from_seq":4}')
    assert isinstance(cmd, ResendCommand)
    raw = {
        "v": 1,
        "id": "r3",
        "cmd": "disconnect",
        "meter": "m1",
        "gateway": "gw-1",
        "key_id": "hq1",
        "expires": "2026-11-28T13:00:00Z",
        "sig": "AAAA",
    }
    cmd = COMMAND.validate_python(raw)
    assert isinstance(cmd, RelayCommand)
    assert b'"sig"' not in signing_bytes(raw)
    assert signing_bytes(raw) == signing_bytes(dict(reversed(list(raw.items()))))


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b'{"v":1,"id":"r1","cmd":"melt"}',
        b'{"v":2,"id":"r1","cmd":"topup","token":"x"}',
        b'{"v":1,"id":"r1","cmd":"disconnect","meter":"m1"}',
        b'{"v":1,"id":"r 1","cmd":"reread","meter":"m1"}',
        b'{"v":1,"id":"r1","cmd":"resend","meter":"m1","from_seq":0}',
        b'{"v":1,"id":"r1","cmd":"topup","token":"x","extra":1}',
    ],
)
def test_broken_commands_are_rejected(payload: bytes) -> None:
    with pytest.raises(ValidationError):
        COMMAND.validate_json(payload)


@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_parse_or_raise_validation_error(payload: bytes) -> None:
    with contextlib.suppress(ValidationError):
        COMMAND.validate_json(payload)


def test_exported_schemas_are_current() -> None:
    for name, text in render().items():
        path = ROOT / "docs" / "schemas" / name
        assert path.read_text() == text, f"{path} is stale: run python scripts/export_schemas.py"


def test_the_pages_enumerations_are_the_codes() -> None:
    """Commands, error codes, token reasons, event kinds, credit states and relay words on
    docs/mqtt.md are rendered from the code's own definitions."""
    page = PAGE.read_text()
    assert page.count("<!-- generated: ") == 6
    assert page == refreshed(page), "docs/mqtt.md is stale: run python scripts/export_schemas.py"


def test_the_token_reasons_are_both_enumerations_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The page lists every reason the token checks and the gateway give, in the enums'
    order, and rendering fails on a reason without its line or a line without its reason."""
    blocks = {m.group(2): m.group(3) for m in BLOCK.finditer(PAGE.read_text())}
    listed = re.findall(r"^- `([a-z_]+)`: ", blocks["token-reasons"], re.M)
    assert listed == [*RejectReason, *GatewayRefusal]
    assert all(isinstance(r, RejectReason | GatewayRefusal) for r in REASON_MEANINGS)
    unexplained = {r: m for r, m in REASON_MEANINGS.items() if r != GatewayRefusal.KEY_NOT_HELD}
    monkeypatch.setattr(export_schemas, "REASON_MEANINGS", unexplained)
    with pytest.raises(SystemExit, match=r"token reasons: no meaning for \['key_not_held'\]"):
        vocabulary()
    unknown = {str(r): m for r, m in REASON_MEANINGS.items()}
    unknown["invalid_amount"] = "a reason no code gives"
    monkeypatch.setattr(export_schemas, "REASON_MEANINGS", unknown)
    with pytest.raises(SystemExit, match=r"unknown \['invalid_amount'\]"):
        vocabulary()


def test_config_reference_is_current() -> None:
    assert DOC.read_text() == updated(DOC.read_text()), "run scripts/gen_config_reference.py"
