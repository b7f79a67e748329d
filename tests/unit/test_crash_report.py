"""A fault no boundary held ends the gateway with one line naming it, and its traceback goes to an owner-only file beside the store."""

from __future__ import annotations

from pathlib import Path

from gateway.startup import crash_report
from tests.support.gateway_env import GatewayWorld


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_one_line_names_the_first_fault_and_the_file(tmp_path: Path) -> None:
    world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
    config = world.config()
    group = _raised(ExceptionGroup("tasks", [ValueError("boom in the clock")]))
    line = crash_report(config, group)
    crash = tmp_path / "gateway.db.crash.txt"
    assert line == f"internal fault: ValueError: boom in the clock (traceback in {crash})"
    assert "\n" not in line
    assert "Traceback" in crash.read_text()
    assert "boom in the clock" in crash.read_text()
    assert crash.stat().st_mode & 0o777 == 0o600


def test_an_unwritable_file_is_said_in_the_line(tmp_path: Path) -> None:
    world = GatewayWorld(tmp_path, tmp_path / "missing" / "gateway.db")
    line = crash_report(world.config(), _raised(RuntimeError("x")))
    assert line.startswith("internal fault: RuntimeError: x (traceback not written (")
