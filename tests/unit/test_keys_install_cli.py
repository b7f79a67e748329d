"""`meter-provision keys install` derives the meters' keys of a later epoch from the vending key and puts them in the gateway's store in one go; an unknown meter or an epoch out of range is one line with exit code 2 and installs nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.store import Store
from protocol.tokens.keys import derive_meter_key
from provisioning.__main__ import main
from tests.support.gateway_env import VENDING_KEY, GatewayWorld, meter_id


@pytest.fixture
def site(tmp_path: Path) -> GatewayWorld:
    world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
    world.enrol([1, 2])
    world.write_config(tcp=("127.0.0.1", 1))
    key = tmp_path / "vending.key"
    key.write_text(VENDING_KEY.hex() + "\n")
    key.chmod(0o600)
    return world


def _install(site: GatewayWorld, *args: str) -> int:
    folder = site.folder
    return main(
        ["keys", "install", "--config", str(folder / "gateway.toml"),
         "--vending-key", str(folder / "vending.key"), *args]
    )  # fmt: skip


def test_install_puts_every_meters_next_key_in_the_store(
    site: GatewayWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _install(site, "--epoch", "1", "--all") == 0
    assert "installed the key epoch 1 keys of 2 meter(s)" in capsys.readouterr().out
    with Store.open(site.store_path) as store:
        for meter in store.load_meters():
            mid = meter.record.meter_id
            assert meter.next_keys == {1: derive_meter_key(VENDING_KEY, mid, 1).secret}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epoch", "1", "--meter", meter_id(1), "--meter", "PE1-999999"], "not enrolled"),
        (["--epoch", "0", "--all"], "--epoch must be 1..8191"),
        (["--epoch", "8192", "--all"], "--epoch must be 1..8191"),
    ],
)
def test_a_refused_install_is_one_line_and_installs_nothing(
    site: GatewayWorld, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert _install(site, *args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("meter-provision")
    assert message in err
    with Store.open(site.store_path) as store:
        assert all(m.next_keys == {} for m in store.load_meters())
