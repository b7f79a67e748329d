"""`meter-provision status` shows a DL/T 645 meter by the 12-digit address it was enrolled by (the table's unit column, and `address` in --json beside the number in `unit`); a Modbus meter keeps its unit number and a null address."""

from __future__ import annotations

import json
from pathlib import Path

from tests.shell.test_provision_cli import GW, cli
from tests.support.dlt645_env import OPERATOR, PASSWORD
from tests.support.gateway_env import GatewayWorld, to_toml


def test_status_shows_a_dlt645_meter_by_its_address(tmp_path: Path) -> None:
    folder = tmp_path / "gw"
    assert cli("init", "--dir", folder, "--gateway-id", GW).rc == 0
    world = GatewayWorld(folder, folder / "gateway.db", gateway_id=GW)
    data = world.config_data(tcp=("127.0.0.1", 1), broker=("127.0.0.1", 1))
    data["buses"].append(
        {"name": "dlt-1", "kind": "rtu", "protocol": "dlt645",
         "device": "socket://127.0.0.1:1", "baud": 2400, "parity": "E"}
    )  # fmt: skip
    config = folder / "gateway.toml"
    config.write_text(to_toml(data))
    config.chmod(0o600)
    vending = folder / "vending.key"
    assert cli("keys", "new-vending-key", "--out", vending).rc == 0
    tcp_bus = data["buses"][0]["name"]
    for meter, where in (
        ("DLT-000001", ["--bus", "dlt-1", "--address", "000012345678",
                        "--password", PASSWORD, "--operator-code", OPERATOR]),
        ("PE1-000001", ["--bus", tcp_bus, "--unit", "7"]),
    ):  # fmt: skip
        key = folder / f"{meter}.key"
        made = cli("keys", "meter-key", "--vending-key", vending, "--meter", meter, "--out", key)
        assert made.rc == 0, made.err
        ran = cli("enrol", "--config", config, "--meter", meter, *where,
                  "--key-file", key, "--price-per-kwh", "1")  # fmt: skip
        assert ran.rc == 0, ran.err

    table = cli("status", "--config", config)
    assert table.rc == 0, table.err
    rows = {line.split()[0]: line.split() for line in table.out.splitlines()[1:]}
    assert rows["DLT-000001"][1:3] == ["dlt-1", "000012345678"]
    assert rows["PE1-000001"][1:3] == [tcp_bus, "7"]
    listed = {r["meter"]: r for r in json.loads(cli("status", "--config", config, "--json").out)}
    assert (listed["DLT-000001"]["unit"], listed["DLT-000001"]["address"]) == (
        12345678,
        "000012345678",
    )
    assert (listed["PE1-000001"]["unit"], listed["PE1-000001"]["address"]) == (7, None)
