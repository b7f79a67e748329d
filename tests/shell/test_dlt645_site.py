"""A DL/T 645 site through the CLI and a real gateway process: init, scan (probing addresses, and read address on a point-to-point link), enrol by 12-digit address with password and operator code, commission (relay switched and read back by remote control), then `meter-gateway run` bills the meters, trips one at exhaustion and closes it again after an online top-up, while the commissioning report reaches the headend; bad DL/T 645 enrolments are refused by field; the passwords move to a replacement box only sealed with the meter keys, an ESAM mark in the clear."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.store import Store
from meter_sim.clock import ScaledClock
from meter_sim.dlt645_simulator import Dlt645Simulator
from tests.integration.helpers import MessageLog, eventually, sim_start
from tests.shell.test_provision_cli import GW, acli, cli
from tests.support.dlt645_env import dlt645_bus
from tests.support.gateway_env import GatewayWorld, online_token, to_toml
from tests.support.gateway_process import GatewayProcess
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import TestClient

SPEED = 60.0
M1, M2 = "DLT-000001", "DLT-000002"


@pytest.mark.asyncio
@pytest.mark.broker
async def test_a_dlt645_site_is_enrolled_commissioned_billed_cut_off_and_reconnected(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    start_f, start = sim_start(SPEED)
    folder = tmp_path / "gw"
    clock = ScaledClock(SPEED, start_f)
    async with Dlt645Simulator.start(meters=2, seed=3, baud=9600, clock=clock) as sim:
        assert cli("init", "--dir", folder, "--gateway-id", GW).rc == 0
        world = GatewayWorld(folder, folder / "gateway.db", gateway_id=GW)
        data = world.config_data(broker=(mosquitto.host, mosquitto.port), speed=SPEED, start=start)
        data["buses"] = [dlt645_bus(sim)]
        config_path = folder / "gateway.toml"
        config_path.write_text(to_toml(data))
        config_path.chmod(0o600)
        vending = folder / "vending.key"
        assert cli("keys", "new-vending-key", "--out", vending).rc == 0
        for meter in (M1, M2):
            key = folder / f"{meter}.key"
            made = cli(
                "keys", "meter-key", "--vending-key", vending, "--meter", meter, "--out", key
            )
            assert made.rc == 0, made.err

        scan = await acli(
            "scan", "--config", config_path, "--bus", "dlt-1",
            "--addresses", "000000000001-000000000003",
        )  # fmt: skip
        assert scan.rc == 0, scan.err
        assert "000000000001  dlt645_single_phase" in scan.out
        assert "000000000002  dlt645_single_phase" in scan.out
        assert "000000000003" not in scan.out
        assert "3/3 addresses, 2 found" in scan.err

        # A wrong field is refused by name, and nothing is written.
        bad = cli(
            "enrol", "--config", config_path, "--meter", M1, "--bus", "dlt-1",
            "--address", "00000000001X", "--password", "02000000",
            "--key-file", folder / f"{M1}.key", "--price-per-kwh", "1",
        )  # fmt: skip
        assert bad.rc != 0
        assert "address" in bad.err
        no_password = cli(
            "enrol", "--config", config_path, "--meter", M1, "--bus", "dlt-1",
            "--address", "000000000001", "--key-file", folder / f"{M1}.key",
            "--price-per-kwh", "1",
        )  # fmt: skip
        assert no_password.rc != 0
        assert "password" in no_password.err

        # 1.50 runs out in seconds at 6 kW and 1.00 a kWh; meter 2 has plenty.
        for meter, address, credit in ((M1, "000000000001", "1.50"), (M2, "000000000002", "500")):
            ran = cli(
                "enrol", "--config", config_path, "--meter", meter, "--bus", "dlt-1",
                "--address", address, "--password", "02000000", "--operator-code", "00000001",
                "--key-file", folder / f"{meter}.key", "--price-per-kwh", "1",
                "--credit", credit, "--alarm1", "1", "--alarm2", "0.50",
                "--overdraft-limit", "0", "--reconnect-threshold", "0.50",
                "--max-balance", "100000",
            )  # fmt: skip
            assert ran.rc == 0, ran.err
        # The password is in the store (owner-only), and in no other file of the site.
        assert (folder / "gateway.db").stat().st_mode & 0o077 == 0
        for path in folder.iterdir():
            if not path.name.startswith("gateway.db"):
                assert b"02000000" not in path.read_bytes(), path

        report = await acli("commission", M1, "--config", config_path, "--yes")
        assert report.rc == 0, report.out + report.err
        assert "PASS  relay    open->open, closed->closed" in report.out
        assert "commissioning PASSED" in report.out
        assert sim.state(1)["relay_closed"] is True
        assert sim.state(1)["dlt645"]["commands"] == ["trip", "close"]

        sim.set_load(1, 6000)
        sim.set_load(2, 300)
        gateway = GatewayProcess(config_path, folder / "gateway.log")
        with TestClient(mosquitto, "headend-dlt645") as headend:
            headend.subscribe(f"prepaid/v1/{GW}/#")
            log = MessageLog(headend)
            gateway.start()
            try:
                commissioned = await eventually(
                    lambda: log.events(M1, "commissioned"), 30, "commissioning event"
                )
                assert commissioned[0]["reason"] == "pass"
                await eventually(lambda: sim.state(1)["relay_closed"] is False, 60, "cut-off")
                assert sim.state(1)["dlt645"]["relay_command_open"] is True
                assert sim.state(2)["relay_closed"] is True
                opened = await eventually(
                    lambda: log.events(M1, "relay_opened") or log.events(M1, "relay_changed"),
                    20,
                    "relay event",
                )
                assert opened
                billed = [b["balance"] for b in log.of(M1, "balance")]
                assert billed
                assert min(billed) <= 0

                token = online_token(0, 1, 5000, meter=M1)
                cmd = {"v": 1, "id": "topup-1", "cmd": "topup", "token": token}
                headend.publish(f"prepaid/v1/{GW}/meters/{M1}/cmd", json.dumps(cmd).encode())
                await eventually(lambda: sim.state(1)["relay_closed"] is True, 30, "reconnect")
                assert sim.state(1)["dlt645"]["commands"][-1] == "close"
                await eventually(
                    lambda: any(b["balance"] > 4000 for b in log.of(M1, "balance")),
                    20,
                    "the credit on the balance topic",
                )
            finally:
                assert gateway.stop() == 0, gateway.text()[-3000:]
        assert "time broadcast" in gateway.text()

    # Read address (13H) finds the one meter on a point-to-point link.
    async with Dlt645Simulator.start(meters=1, first_address=201512340001, baud=9600) as one:
        data["buses"] = [dlt645_bus(one)]
        config_path.write_text(to_toml(data))
        found = await acli("scan", "--config", config_path, "--bus", "dlt-1")
        assert found.rc == 0, found.err
        assert "201512340001  dlt645_single_phase" in found.out


def _dlt645_site(folder: Path) -> Path:
    """An initialised site with a DL/T 645 bus (nothing listens: enrolment needs none)."""
    assert cli("init", "--dir", folder, "--gateway-id", GW).rc == 0
    world = GatewayWorld(folder, folder / "gateway.db", gateway_id=GW)
    data = world.config_data()
    data["buses"] = [{"name": "dlt-1", "kind": "rtu", "protocol": "dlt645", "device": "/dev/null"}]
    config = folder / "gateway.toml"
    config.write_text(to_toml(data))
    config.chmod(0o600)
    return config


def test_dlt645_passwords_move_with_an_export_only_sealed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _dlt645_site(tmp_path / "old")
    vending = tmp_path / "vending.key"
    assert cli("keys", "new-vending-key", "--out", vending).rc == 0
    for meter, password in ((M1, "02123456"), (M2, "esam")):
        key = tmp_path / f"{meter}.key"
        assert (
            cli("keys", "meter-key", "--vending-key", vending, "--meter", meter, "--out", key).rc
            == 0
        )
        ran = cli(
            "enrol", "--config", config, "--meter", meter, "--bus", "dlt-1",
            "--address", meter[-6:].rjust(12, "0"), "--password", password,
            "--operator-code", "0000ABCD" if password != "esam" else "",
            "--key-file", key, "--price-per-kwh", "1",
        )  # fmt: skip
        assert ran.rc == 0, ran.err
    plain = tmp_path / "plain.json"
    assert cli("export", "--config", config, "--out", plain).rc == 0
    assert "02123456" not in plain.read_text()
    monkeypatch.setenv("PREPAID_EDGE_PASSPHRASE", "correct horse battery")
    sealed = tmp_path / "sealed.json"
    assert cli("export", "--config", config, "--out", sealed, "--with-keys").rc == 0
    assert "02123456" not in sealed.read_text()

    new = _dlt645_site(tmp_path / "new")
    ran = cli("import", sealed, "--config", new)
    assert ran.rc == 0, ran.err
    with Store.open(tmp_path / "new" / "gateway.db") as store:
        moved = {m.record.meter_id: m.record for m in store.load_meters()}
    assert moved[M1].control_secret == "02123456 0000ABCD"
    assert moved[M1].unit_id == 1
    assert moved[M2].control_secret == "esam"
