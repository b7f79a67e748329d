"""Store guarantees for the shell: executed signed commands are remembered until they expire (across restarts), and enrolling several meters is all or nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.core.meter_state import MeterState, enrol
from gateway.store import DuplicateMeterError, MeterRecord, Store
from tests.support.gateway_env import fast_settings

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


def test_add_meters_is_all_or_nothing(tmp_path: Path) -> None:
    def meter(mid: str) -> tuple[MeterRecord, MeterState]:
        return MeterRecord(mid, "tcp-1", 1, "pe1", bytes(32)), enrol(mid, fast_settings(), NOW)

    with Store.open(tmp_path / "gw.db") as store:
        store.add_meters([meter("a"), meter("b")], NOW)
        with pytest.raises(DuplicateMeterError, match="meter b is already enrolled"):
            store.add_meters([meter("c"), meter("b"), meter("d")], NOW)
        assert [m.record.meter_id for m in store.load_meters()] == ["a", "b"]
