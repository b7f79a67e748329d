"""Executed signed commands are remembered in the store until they expire, across restarts, so a captured command cannot be replayed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.store import Store

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def test_a_command_is_claimed_once_even_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    with Store.open(path) as store:
        assert store.claim_command("c-1", NOW + timedelta(minutes=5), NOW)
        assert not store.claim_command("c-1", NOW + timedelta(minutes=5), NOW)
    with Store.open(path) as store:
        assert not store.claim_command(
            "c-1", NOW + timedelta(minutes=5), NOW + timedelta(minutes=1)
        )
        # Once expired the id is forgotten (the signature check refuses such a command).
        assert store.claim_command("c-1", NOW + timedelta(hours=1), NOW + timedelta(minutes=10))
