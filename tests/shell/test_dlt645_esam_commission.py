"""Commissioning a DL/T 645 meter enrolled with `--password esam`, through the installed console scripts on a simulated bus, does what docs/dlt645.md's Limits say: the meter is read, never switched, its relay check fails with the reason the gateway gives for not switching it, the command exits 1 without a traceback, and the failed report is stored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.public import ESAM_REASON
from gateway.store import Store
from tests.shell.test_docs_simulator_page import _free_port, served, sh

pytestmark = pytest.mark.asyncio

METER = "DLT-000001"


async def test_commissioning_an_esam_meter_fails_its_relay_check_saying_why(
    tmp_path: Path,
) -> None:
    bus, control = _free_port(), _free_port()
    serve = (
        f"meter-sim serve --protocol dlt645 --meters 1 --baud 9600 "
        f"--rtu-tcp 127.0.0.1:{bus} --control 127.0.0.1:{control} --seed 1"
    )
    async with served(serve, tmp_path) as printed:
        assert printed["rtu-tcp"] == f"127.0.0.1:{bus}"
        init = await sh("meter-provision init --dir site --gateway-id gw-esam", tmp_path)
        assert init.rc == 0, init
        config = tmp_path / "site" / "gateway.toml"
        table = (
            '\n[[buses]]\nname = "dlt-1"\nkind = "rtu"\nprotocol = "dlt645"\n'
            f'device = "socket://127.0.0.1:{bus}"\nbaud = 9600\nparity = "E"\n'
        )
        config.write_text(config.read_text() + table)
        for step in (
            "meter-provision keys new-vending-key --out vending.key",
            f"meter-provision keys meter-key --vending-key vending.key --meter {METER} "
            f"--out {METER}.key",
            f"meter-provision enrol --config site/gateway.toml --meter {METER} --bus dlt-1 "
            f"--address 000000000001 --password esam --key-file {METER}.key "
            "--price-per-kwh 1.00 --credit 5.00",
        ):
            ran = await sh(step, tmp_path)
            assert ran.rc == 0, (step, ran)

        report = await sh(
            f"meter-provision commission {METER} --config site/gateway.toml --yes", tmp_path
        )
        state = await sh(f"meter-sim ctl --control 127.0.0.1:{control} state 1", tmp_path)
        status = await sh("meter-provision status --config site/gateway.toml --json", tmp_path)

    # Exit 1: a failure found (the field guide: 0 only when every check passed).
    assert report.rc == 1, report
    assert "Traceback" not in report.out + report.err
    lines = report.out.splitlines()
    assert any(line.startswith("PASS  read ") for line in lines), lines  # read: yes
    # The relay check failed, with the reason the gateway's relay_not_switched gives.
    assert "security module" in ESAM_REASON
    assert f"FAIL  relay    {ESAM_REASON}" in lines, lines
    assert f"{METER}: commissioning FAILED (stored; the gateway sends it to the headend)" in lines

    # Switch: no. The meter was sent no command and its relay is where it was.
    meter = json.loads(state.out)
    assert meter["relay_closed"] is True
    assert meter["dlt645"]["commands"] == []

    # The store keeps the failed report, queued for the headend.
    with Store.open(tmp_path / "site" / "gateway.db") as store:
        events = store.events(METER)
        pending = store.outbox_pending()
    assert events[-1]["event"] == "commissioned"
    assert events[-1]["reason"] == "fail"
    details = events[-1]["details"]
    assert isinstance(details, dict)
    checks = details["checks"]
    assert isinstance(checks, list)
    assert {"name": "relay", "ok": False, "detail": ESAM_REASON} in checks
    assert [(r.meter_id, r.body["event"]) for r in pending] == [(METER, "commissioned")]
    assert status.rc == 0, status
    assert json.loads(status.out)[0]["commissioned"] == "fail"
