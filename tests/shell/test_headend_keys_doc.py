"""docs/mqtt.md's *Your signing keys*, run as written: its `meter-provision keys new-signing-key` commands print what the page shows and write the key files it describes (0600, 64 hex digits and a newline, the public key printed is the file's), its config snippet is a valid `[tokens]` table, its Python snippets load such a file and make one the CLI reads, and a command and an online token signed with the keys are what the gateway's own code accepts."""

from __future__ import annotations

import re
import shlex
import stat
import subprocess
import sys
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from examples.headend import online_token, read_key_file, signed_command
from gateway.config import TokenSettings
from protocol.command_auth import b64url_encode, load_public_keys, verify_command
from protocol.tokens import Accepted, ReplayWindow, verify_online
from protocol.tokens.online import load_public_key
from provisioning.key_files import read_secret_file
from tests.unit.test_docs_commands import _commands

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MARKER = "<!-- test: headend keys"
KEY = re.compile(r"[A-Za-z0-9_-]{43}")


def _section() -> str:
    page = (ROOT / "docs" / "mqtt.md").read_text()
    start = page.index("### Your signing keys")
    return page[start : page.index("**Resends**", start)]


def _console() -> tuple[list[str], list[str]]:
    """The commands of the block after the marker, and the output lines the page shows."""
    section = _section()
    block = re.search(r"```console\n(.*?)```", section[section.index(MARKER) :], re.DOTALL)
    assert block is not None
    shown = [line for line in block.group(1).splitlines() if not line.startswith("$ ")]
    return list(_commands(block.group(1))), shown


def _fenced(lang: str) -> list[str]:
    return [
        re.sub(r"^  ", "", body, flags=re.M)
        for body in re.findall(rf"```{lang}\n(.*?)```", _section(), re.DOTALL)
    ]


def _public(key: Ed25519PrivateKey) -> str:
    return b64url_encode(key.public_key().public_bytes_raw())


def test_the_key_commands_print_what_the_page_shows_and_write_the_files_it_describes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands, shown = _console()
    printed: list[str] = []
    for command in commands:
        prog, *args = shlex.split(command)
        ran = subprocess.run(
            [str(BIN / prog), *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert ran.returncode == 0, ran.stderr
        printed += ran.stdout.splitlines()
    assert len(printed) == len(shown)
    for got, page in zip(printed, shown, strict=True):
        assert re.fullmatch(KEY.sub(KEY.pattern, re.escape(page)), got), (got, page)
    publics = dict(re.findall(r"public key for gateways: (\S+) = (\S+)", "\n".join(printed)))
    assert set(publics) == {"hq-2026", "vend-2026"}
    for key_id, public in publics.items():
        path = tmp_path / f"{key_id}.key"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert re.fullmatch(r"[0-9a-f]{64}\n", path.read_text())
        assert _public(read_key_file(path)) == public

    # The page's config snippet, with the keys just made, is what a gateway accepts.
    (snippet,) = _fenced("toml")
    for key_id, public in publics.items():
        snippet = re.sub(rf'({key_id} = ")[^"]+', rf"\g<1>{public}", snippet)
    tokens = TokenSettings.model_validate(tomllib.loads(snippet)["tokens"])
    _signed_with_the_keys(tmp_path, tokens)

    # The page's snippet that loads a key file gives the same key.
    namespace: dict[str, Any] = {}
    load, _make = _fenced("python")
    monkeypatch.chdir(tmp_path)
    exec(load, namespace)  # noqa: S102 - the page's own example, run as written
    assert _public(namespace["key"]) == publics["hq-2026"]


def _signed_with_the_keys(folder: Path, tokens: TokenSettings) -> None:
    now = datetime.now(UTC)
    command = signed_command(
        "disconnect",
        "gw-001",
        "PE1-000042",
        key_id="hq-2026",
        key=read_key_file(folder / "hq-2026.key"),
    )
    expires = datetime.fromisoformat(command["expires"])
    verify_command(command, load_public_keys(tokens.headend_public_keys), now, expires)
    token = online_token(
        read_key_file(folder / "vend-2026.key"),
        "vend-2026",
        "PE1-000042",
        counter=1,
        amount=1250,
        currency="KES",
        txn_id=bytes(16),
        issued_at=now,
        expires_at=now + timedelta(days=1),
    )
    public = {k: load_public_key(v) for k, v in tokens.online_public_keys.items()}
    verdict = verify_online(token, "PE1-000042", public, ReplayWindow.fresh(0), now)
    assert isinstance(verdict, Accepted), verdict


def test_the_pages_python_makes_a_key_file_the_cli_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _load, make = _fenced("python")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    exec(make, namespace)  # noqa: S102 - the page's own example, run as written
    path = tmp_path / "hq-2026.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = read_secret_file(path, 32)
    assert secret == namespace["key"].private_bytes_raw()
