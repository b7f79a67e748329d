"""The provisioning CLI against the real simulator and a temporary store: init, scan, enrol
(one and CSV), commission, status, export/import, and every bad input refused with one
line, a non-zero exit and the store unchanged."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from gateway.config import load_config
from gateway.core.commands import Publish
from gateway.core.tariff import FlatPricing
from gateway.store import Store
from meter_sim.simulator import Simulator
from provisioning.__main__ import main
from provisioning.key_files import write_secret_file
from tests.support.gateway_env import GatewayWorld, to_toml

GW = "gw-prov"


@dataclass
class Ran:
    rc: int
    out: str
    err: str


def cli(*argv: object) -> Ran:
    """``meter-provision ARGV`` in this process, its exit code and output."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exc:
            rc = int(exc.code or 0)
    return Ran(rc, out.getvalue(), err.getvalue())


async def acli(*argv: object) -> Ran:
    """The CLI in a thread: its commands run their own event loop beside the simulator's."""
    return await asyncio.to_thread(cli, *argv)


@dataclass
class Site:
    folder: Path
    sim: Simulator

    @property
    def config(self) -> Path:
        return self.folder / "gateway.toml"

    @property
    def store(self) -> Path:
        return self.folder / "gateway.db"

    def meter_key(self, meter: str) -> Path:
        path = self.folder / f"{meter}.key"
        if path.exists():
            return path
        ran = cli(
            "keys",
            "meter-key",
            "--vending-key",
            self.folder / "vending.key",
            "--meter",
            meter,
            "--out",
            path,
        )
        assert ran.rc == 0, ran.err
        return path

    def enrol(self, unit: int, *extra: object) -> Ran:
        meter = f"PE1-{unit:06d}"
        return cli(
            "enrol",
            "--config",
            self.config,
            "--meter",
            meter,
            "--bus",
            "tcp-1",
            "--unit",
            unit,
            "--key-file",
            self.meter_key(meter),
            "--price-per-kwh",
            "100",
            *extra,
        )

    def snapshot(self) -> bytes:
        """The store's meaningful content (meters, ledgers, events, outbox)."""
        with Store.open(self.store) as store:
            meters = store.load_meters()
            rows = [(m.record, m.state) for m in meters]
            events = [store.events(m.record.meter_id) for m in meters]
            depth = store.outbox_depth()
        return repr((rows, events, depth)).encode()


def write_site_config(folder: Path, sim: Simulator, **kw: object) -> None:
    """What the engineer does after init: name the buses (here the simulator's endpoint)."""
    world = GatewayWorld(folder, folder / "gateway.db", gateway_id=GW)
    data = world.config_data(tcp=sim.tcp_address, timeout=0.3, **kw)  # type: ignore[arg-type]
    (folder / "gateway.toml").write_text(to_toml(data))


@pytest_asyncio.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with Simulator.start(meters=3, seed=7) as sim:
        folder = tmp_path / "gw"
        ran = cli("init", "--dir", folder, "--gateway-id", GW, "--self-signed-days", "30")
        assert ran.rc == 0, ran.err
        write_site_config(folder, sim)
        assert cli("keys", "new-vending-key", "--out", folder / "vending.key").rc == 0
        yield Site(folder, sim)


# ---------------------------------------------------------------------------- init


def test_init_writes_owner_only_identity_config_and_empty_store(tmp_path: Path) -> None:
    ran = cli("init", "--dir", tmp_path, "--gateway-id", "gw-1", "--key-type", "p256")
    assert ran.rc == 0, ran.err
    assert (tmp_path / "gateway.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "gateway.csr").read_text().startswith("-----BEGIN CERTIFICATE REQUEST")
    assert 'gateway_id = "gw-1"' in (tmp_path / "gateway.toml").read_text()
    with Store.open(tmp_path / "gateway.db") as store:
        assert store.load_meters() == []
    key_before = (tmp_path / "gateway.key").read_bytes()
    again = cli("init", "--dir", tmp_path, "--gateway-id", "gw-1")
    assert again.rc == 2
    assert "refusing to replace it without --force" in again.err
    assert again.err.count("\n") == 1
    assert (tmp_path / "gateway.key").read_bytes() == key_before
    forced = cli("init", "--dir", tmp_path, "--gateway-id", "gw-1", "--force")
    assert forced.rc == 0, forced.err
    assert (tmp_path / "gateway.key").read_bytes() != key_before


def test_init_refuses_a_bad_gateway_id_before_writing(tmp_path: Path) -> None:
    ran = cli("init", "--dir", tmp_path / "x", "--gateway-id", "bad id/with spaces")
    assert ran.rc == 2
    assert "--gateway-id" in ran.err
    assert not (tmp_path / "x").exists()


def test_init_with_a_store_in_a_missing_folder_writes_nothing(tmp_path: Path) -> None:
    ran = cli("init", "--dir", tmp_path / "gw", "--gateway-id", "gw-1",
              "--store", tmp_path / "nowhere" / "gateway.db")  # fmt: skip
    assert ran.rc == 2
    assert "does not exist" in ran.err
    assert not (tmp_path / "gw").exists()


def test_init_with_a_bench_broker_writes_it_without_tls(tmp_path: Path) -> None:
    folder = tmp_path / "gw"
    ran = cli("init", "--dir", folder, "--gateway-id", "gw-1", "--broker", "mqtt://127.0.0.1:1884")
    assert ran.rc == 0, ran.err
    assert "broker: mqtt://127.0.0.1:1884\nnext: add [[buses]] to the config" in ran.out
    config = load_config(folder / "gateway.toml")
    assert [(b.host, b.port, b.tls) for b in config.mqtt.brokers] == [("127.0.0.1", 1884, False)]
    assert config.mqtt.ca_file is None  # no CA to wait for: the TLS files are commented out
    site = cli("init", "--dir", tmp_path / "site", "--gateway-id", "gw-2",
               "--broker", "mqtt.example-power.com")  # fmt: skip
    assert site.rc == 0, site.err
    tls = load_config(tmp_path / "site" / "gateway.toml").mqtt
    assert [(b.host, b.port, b.tls) for b in tls.brokers] == [
        ("mqtt.example-power.com", 8883, True)
    ]
    assert tls.ca_file == tmp_path / "site" / "ca.pem"


def test_init_refuses_a_bad_broker_before_writing(tmp_path: Path) -> None:
    ran = cli("init", "--dir", tmp_path / "gw", "--gateway-id", "gw-1", "--broker", "ws://x:1")
    assert ran.rc == 2
    assert ran.err == (
        "meter-provision init: error: --broker 'ws://x:1': unknown scheme 'ws'; write "
        "mqtts://HOST[:PORT] (TLS) or mqtt://HOST[:PORT] (no TLS)\n"
    )
    assert not (tmp_path / "gw").exists()


def test_a_key_written_into_a_new_folder_gets_it_owner_only(tmp_path: Path) -> None:
    """`keys meter-key ... --out keys/X.key` as the guide and the help show it: the folder
    is made 0700; a folder that exists keeps its mode; a file in the way is one line."""
    vending = tmp_path / "vending.key"
    assert cli("keys", "new-vending-key", "--out", vending).rc == 0
    out = tmp_path / "keys" / "street-7" / "PE1-000001.key"
    ran = cli("keys", "meter-key", "--vending-key", vending, "--meter", "PE1-000001", "--out", out)
    assert ran.rc == 0, ran.err
    assert out.stat().st_mode & 0o777 == 0o600
    assert (out.parent.stat().st_mode & 0o777, out.parent.parent.stat().st_mode & 0o777) == (
        0o700,
        0o700,
    )
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    key = shared / "PE1-000002.key"
    assert cli("keys", "meter-key", "--vending-key", vending, "--meter", "PE1-000002",
               "--out", key).rc == 0  # fmt: skip
    assert shared.stat().st_mode & 0o777 == 0o755
    (tmp_path / "afile").write_text("")
    blocked = cli("keys", "meter-key", "--vending-key", vending, "--meter", "PE1-000003",
                  "--out", tmp_path / "afile" / "PE1-000003.key")  # fmt: skip
    assert blocked.rc == 2
    assert blocked.err == (
        "meter-provision keys meter-key: error: cannot create "
        f"{tmp_path / 'afile' / 'PE1-000003.key'}: Not a directory\n"
    )


def test_export_to_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    assert cli("init", "--dir", tmp_path, "--gateway-id", "gw-1").rc == 0
    ran = cli("export", "--config", tmp_path / "gateway.toml", "--out", tmp_path / "no" / "x.json")
    assert ran.rc == 2
    assert ran.err.count("\n") == 1
    assert "No such file or directory" in ran.err


# ---------------------------------------------------------------------------- scan


@pytest.mark.asyncio
async def test_scan_finds_the_simulated_meters_and_names_their_map(site: Site) -> None:
    ran = await acli(
        "scan", "--config", site.config, "--bus", "tcp-1", "--units", "1-5", "--timeout", "0.1"
    )
    assert ran.rc == 0, ran.err
    lines = ran.out.splitlines()
    assert [line.split()[:2] for line in lines[1:]] == [["1", "pe1"], ["2", "pe1"], ["3", "pe1"]]
    assert "5/5 units, 3 found" in ran.err
    assert "s left" in ran.err


@pytest.mark.parametrize("map_name", ["sdm120", "sdm630", "em24", "iem3000"])
@pytest.mark.asyncio
async def test_scan_identifies_third_party_maps(tmp_path: Path, map_name: str) -> None:
    async with Simulator.start(meters=1, map_name=map_name) as sim:
        write_site_config(tmp_path, sim)
        ran = await acli(
            "scan", "--config", tmp_path / "gateway.toml", "--bus", "tcp-1", "--units", "1-2",
            "--timeout", "0.1",
        )  # fmt: skip
    assert ran.rc == 0, ran.err
    rows = [line.split(maxsplit=2) for line in ran.out.splitlines()[1:]]
    assert [r[:2] for r in rows] == [["1", map_name]]
    assert rows[0][2].startswith("probable: ")


@pytest.mark.asyncio
async def test_scan_over_rtu_finds_the_units_that_answer(tmp_path: Path) -> None:
    async with Simulator.start(meters=2, tcp_port=None, rtu_pty=True, seed=5) as sim:
        assert sim.rtu_pty_path is not None
        world = GatewayWorld(tmp_path, tmp_path / "gateway.db", gateway_id=GW)
        (tmp_path / "gateway.toml").write_text(to_toml(world.config_data(rtu=sim.rtu_pty_path)))
        ran = await acli(
            "scan", "--config", tmp_path / "gateway.toml", "--bus", "rtu-1", "--units", "1-4",
            "--timeout", "0.1",
        )  # fmt: skip
    assert ran.rc == 0, ran.err
    assert [line.split()[:2] for line in ran.out.splitlines()[1:]] == [["1", "pe1"], ["2", "pe1"]]
    assert "4/4 units, 2 found" in ran.err


@pytest.mark.asyncio
async def test_scan_refuses_unknown_bus_and_bad_range(site: Site) -> None:
    ran = await acli("scan", "--config", site.config, "--bus", "nope")
    assert ran.rc == 2
    assert "bus 'nope' is not in the config" in ran.err
    ran = await acli("scan", "--config", site.config, "--bus", "tcp-1", "--units", "0-300")
    assert ran.rc == 2
    assert "unit ids are 1..247" in ran.err


def test_scan_of_an_unreachable_endpoint_is_one_line(tmp_path: Path) -> None:
    world = GatewayWorld(tmp_path, tmp_path / "gateway.db", gateway_id=GW)
    # Port 1 on loopback: nothing listens there, the connection is refused.
    (tmp_path / "gateway.toml").write_text(to_toml(world.config_data(tcp=("127.0.0.1", 1))))
    ran = cli("scan", "--config", tmp_path / "gateway.toml", "--bus", "tcp-1", "--units", "1-3")
    assert ran.rc == 2
    assert "cannot reach the bus tcp-1" in ran.err


# ---------------------------------------------------------------------------- enrol


@pytest.mark.asyncio
async def test_enrol_one_meter_then_status_shows_it(site: Site) -> None:
    ran = site.enrol(1, "--credit", "25.00", "--customer-account", "ACC-1")
    assert ran.rc == 0, ran.err
    assert "enrolled PE1-000001 on tcp-1 unit 1 (pe1), credit 25.00 KES, state normal" in ran.out
    status = cli("status", "--config", site.config, "--json")
    rows = json.loads(status.out)
    assert rows[0]["meter"] == "PE1-000001"
    assert (rows[0]["balance"], rows[0]["currency"]) == (2500, "KES")  # minor units in JSON
    assert rows[0]["customer_account"] == "ACC-1"
    assert rows[0]["commissioned"] is None
    table = cli("status", "--config", site.config)
    assert table.out.splitlines()[0].split()[:3] == ["meter", "bus", "unit"]
    assert table.out.splitlines()[1].split()[:5] == ["PE1-000001", "tcp-1", "1", "pe1", "25.00"]


@pytest.mark.asyncio
async def test_enrol_takes_tariff_and_windows_files_and_flags(site: Site) -> None:
    tariff = site.folder / "tariff.json"
    tariff.write_text(
        json.dumps(
            {
                "currency": "KES",
                "energy": {"kind": "flat", "price_per_kwh": "2500"},
                "standing_charge_per_day": 30,
            }
        )
    )
    windows = site.folder / "windows.toml"
    windows.write_text(
        'timezone = "Africa/Nairobi"\n'
        "[[weekly]]\n"
        'name = "nights"\nweekdays = [0, 1, 2, 3, 4, 5, 6]\nstart = "18:00:00"\nend = "06:00:00"\n'
    )
    ran = site.enrol(
        1, "--price-per-kwh", "", "--tariff", tariff, "--windows", windows, "--alarm1", "9.00",
        "--alarm2", "3", "--overdraft-limit", "2.50", "--reconnect-needs-button", "--protected",
        "--window-debt-cap", "40.00",
    )  # fmt: skip
    assert ran.rc == 0, ran.err
    assert "state protected" in ran.out
    with Store.open(site.store) as store:
        (meter,) = store.load_meters()
    settings = meter.state.settings
    assert (settings.alarm1, settings.alarm2, settings.overdraft_limit) == (900, 300, 250)
    assert settings.window_debt_cap == 4000
    assert settings.reconnect_needs_button is True
    assert settings.windows.timezone == "Africa/Nairobi"
    assert [w.name for w in settings.windows.weekly] == ["nights"]
    assert settings.tariffs.entries[0].tariff.standing_charge_per_day == 30
    both = site.enrol(2, "--tariff", tariff)
    assert both.rc == 2
    assert "give a tariff_file or a price_per_kwh, not both" in both.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--meter", "has space"), "meter_id: 'has space' must be 1..32"),
        (("--meter", "PE1/1"), "meter_id: 'PE1/1' must be 1..32"),
        (("--meter", "PE1-1", "--key-epoch", "9000"), "key_epoch: 9000 must be 0..8191"),
    ],
)
@pytest.mark.asyncio
async def test_enrol_refuses_ids_that_cannot_be_tokens_or_topics(
    site: Site, argv: tuple[str, ...], message: str
) -> None:
    key = site.meter_key("PE1-000001")
    ran = cli("enrol", "--config", site.config, "--bus", "tcp-1", "--unit", "1",
              "--key-file", key, "--price-per-kwh", "1", *argv)  # fmt: skip
    assert ran.rc == 2
    assert message in ran.err


@pytest.mark.asyncio
async def test_enrol_refuses_duplicates_and_leaves_the_store_unchanged(site: Site) -> None:
    assert site.enrol(1).rc == 0
    before = site.snapshot()
    again = site.enrol(1)
    assert again.rc == 2
    assert "already in the store" in again.err
    meter = "PE1-000099"
    same_unit = cli(
        "enrol",
        "--config",
        site.config,
        "--meter",
        meter,
        "--bus",
        "tcp-1",
        "--unit",
        "1",
        "--key-file",
        site.meter_key(meter),
        "--price-per-kwh",
        "1",
    )
    assert same_unit.rc == 2
    assert "unit 1 on bus tcp-1 is taken by PE1-000001" in same_unit.err
    assert site.snapshot() == before


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--map", "nosuch"), "map: "),
        (("--map", "sdm120"), "map sdm120 has no relay"),
        (("--map", "sdm120", "--relay-output", "ext-1"), "must be BUS:UNIT:COIL"),
        (("--map", "sdm120", "--relay-output", "rs485-9:5:0"), "unknown bus 'rs485-9'"),
        (("--relay-output", "tcp-1:5:0"), "map pe1 has its own relay"),
        (("--alarm1", "10", "--alarm2", "20"), "alarm1 > alarm2"),
        (("--credit", "lots"), "credit: 'lots' is not an amount like 12.50"),
        (("--credit=-1",), "credit: '-1' is negative"),
        (("--credit", "1.005"), "credit: 1.005 has more than 2 decimals"),
        (("--price-per-kwh", "-3"), "price_per_kwh: '-3' is negative"),
        (("--alarm1", "-5"), "alarm1: '-5' is negative"),
        (("--currency", "usd"), "currency: 'usd' is not an ISO 4217 code"),
        (("--price-per-kwh", "cheap"), "price_per_kwh"),
    ],
)
@pytest.mark.asyncio
async def test_enrol_bad_input_is_one_line_and_writes_nothing(
    site: Site, extra: tuple[str, ...], message: str
) -> None:
    before = site.snapshot()
    ran = site.enrol(2, *extra)
    assert ran.rc == 2
    assert message in ran.err
    assert ran.err.count("\n") == 1
    assert site.snapshot() == before


@pytest.mark.asyncio
async def test_relay_less_meter_is_enrolled_with_a_relay_output(site: Site) -> None:
    ran = site.enrol(2, "--map", "sdm120", "--relay-output", "tcp-1:5:0")
    assert ran.rc == 0, ran.err
    with Store.open(site.store) as store:
        record = next(m.record for m in store.load_meters() if m.record.meter_id == "PE1-000002")
    assert record.map_name == "sdm120"
    assert record.relay_output == "tcp-1:5:0"


@pytest.mark.asyncio
async def test_enrol_refuses_a_world_readable_key_file(site: Site) -> None:
    key = site.meter_key("PE1-000002")
    os.chmod(key, 0o644)
    before = site.snapshot()
    ran = cli(
        "enrol",
        "--config",
        site.config,
        "--meter",
        "PE1-000002",
        "--bus",
        "tcp-1",
        "--unit",
        "2",
        "--key-file",
        key,
        "--price-per-kwh",
        "100",
    )
    assert ran.rc == 2
    assert "accessible by group/others" in ran.err
    assert site.snapshot() == before


@pytest.mark.asyncio
async def test_enrol_csv_writes_all_rows_or_none(site: Site) -> None:
    for unit in (1, 2, 3):
        site.meter_key(f"PE1-{unit:06d}")
    good = site.folder / "street.csv"
    good.write_text(
        "meter_id,bus,unit_id,key_file,credit,customer_account,protected\n"
        "PE1-000001,tcp-1,1,PE1-000001.key,10.00,A-1,no\n"
        "PE1-000002,tcp-1,2,PE1-000002.key,20,A-2,yes\n"
    )
    bad = site.folder / "bad.csv"
    bad.write_text(
        "meter_id,bus,unit_id,key_file,credit\n"
        "PE1-000003,tcp-1,3,PE1-000003.key,1.00\n"
        "PE1-000004,tcp-1,2x,PE1-000003.key,1.00\n"
    )
    before = site.snapshot()
    ran = cli("enrol", "--config", site.config, "--csv", bad, "--price-per-kwh", "50")
    assert ran.rc == 2
    assert f"{bad} line 3: unit_id: '2x' is not a whole number" in ran.err
    assert site.snapshot() == before
    ran = cli("enrol", "--config", site.config, "--csv", good, "--price-per-kwh", "50")
    assert ran.rc == 0, ran.err
    rows = json.loads(cli("status", "--config", site.config, "--json").out)
    assert [(r["meter"], r["balance"], r["credit_state"]) for r in rows] == [
        ("PE1-000001", 1000, "normal"),
        ("PE1-000002", 2000, "protected"),
    ]
    # The same file again: the duplicate is named by line, nothing more is written.
    before = site.snapshot()
    ran = cli("enrol", "--config", site.config, "--csv", good, "--price-per-kwh", "50")
    assert ran.rc == 2
    assert ran.err == (
        f"meter-provision enrol: error: {good} line 2: meter_id: PE1-000001 is already in the "
        "store (enrol --update changes an enrolled meter; take its row out of the file)\n"
    )
    assert site.snapshot() == before


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "a header naming the columns is required"),
        ("meter_id,bus,colour\n", "line 1: colour: unknown column"),
        ("meter_id,bus,unit_id\nPE1-000001,tcp-1,1\n", "line 1: key_file: required column"),
        (
            "meter_id,bus,unit_id,key_file\nPE1-000001,tcp-1,1,k,extra\n",
            "line 2: row: more fields than the header's 4",
        ),
        (
            "meter_id,bus,unit_id,key_file\nPE1-000001,tcp-9,1,k\n",
            "line 2: bus: unknown bus 'tcp-9'",
        ),
        (
            "meter_id,bus,unit_id,key_file\nPE1-000001,tcp-1,1,PE1-000001.key\n"
            "PE1-000002,tcp-1,1,PE1-000001.key\n",
            "line 3: unit_id: unit 1 on bus tcp-1 is taken by PE1-000001",
        ),
        (
            "meter_id,bus,unit_id,key_file\nPE1-000001,tcp-1,1,missing.key\n",
            "line 2: key_file: cannot read",
        ),
    ],
)
@pytest.mark.asyncio
async def test_malformed_csv_is_reported_by_line_and_field(
    site: Site, text: str, message: str
) -> None:
    site.meter_key("PE1-000001")
    path = site.folder / "in.csv"
    path.write_text(text)
    before = site.snapshot()
    ran = cli("enrol", "--config", site.config, "--csv", path, "--price-per-kwh", "50")
    assert ran.rc == 2
    assert message in ran.err
    assert ran.err.count("\n") == 1
    assert site.snapshot() == before


# ---------------------------------------------------------------------------- commission


async def commission(site: Site, meter: str, unit: int, *extra: str) -> tuple[int, str]:
    """Run ``commission`` as a process and type the test token it shows on the meter."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "provisioning",
        "commission",
        meter,
        "--config",
        str(site.config),
        "--keypad-timeout",
        "20",
        *extra,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdin is not None
    if "--yes" not in extra:
        proc.stdin.write(b"n\n")
        await proc.stdin.drain()
    out: list[str] = []
    async with asyncio.timeout(60):
        while line := (await proc.stdout.readline()).decode():
            out.append(line)
            if "test token on the meter's keypad:" in line:
                site.sim.keypad(unit, line.split(":", 1)[1].replace(" ", "").strip())
        _, err = await proc.communicate()
    return proc.returncode or 0, "".join(out) + err.decode()


@pytest.mark.asyncio
async def test_commission_passes_and_is_stored_as_an_outbox_event(site: Site) -> None:
    serial = site.sim.layout.serial_number(1)
    assert site.enrol(1, "--credit", "50.00", "--expected-serial", serial).rc == 0
    rc, text = await commission(site, "PE1-000001", 1, "--yes")
    assert rc == 0, text
    assert "commissioning PASSED" in text
    assert f"PASS  serial   {serial} matches" in text
    assert "PASS  relay    open->open, closed->closed" in text
    assert "PASS  keypad   test token read back and verified" in text
    assert site.sim.state(1)["relay_closed"] is True
    with Store.open(site.store) as store:
        events = store.events("PE1-000001")
        pending = store.outbox_pending()
    assert events[-1]["event"] == "commissioned"
    assert events[-1]["reason"] == "pass"
    assert [r.body["event"] for r in pending] == ["commissioned"]
    status = json.loads(cli("status", "--config", site.config, "--json").out)
    assert status[0]["commissioned"] == "pass"


@pytest.mark.asyncio
async def test_commission_fails_on_a_wrong_serial_and_a_declined_relay(site: Site) -> None:
    assert site.enrol(2, "--expected-serial", "NOT-THIS-ONE").rc == 0
    rc, text = await commission(site, "PE1-000002", 2)
    assert rc == 1
    assert "FAIL  serial" in text
    assert "wrong meter?" in text
    assert "FAIL  relay    not tested: the operator declined" in text
    assert "commissioning FAILED" in text
    assert site.sim.state(2)["relay_closed"] is True


@pytest.mark.asyncio
async def test_commission_of_an_unreachable_meter_writes_nothing(site: Site) -> None:
    # Unit 7 does not exist on the simulator: it never answers.
    meter = "PE1-000007"
    ran = cli(
        "enrol",
        "--config",
        site.config,
        "--meter",
        meter,
        "--bus",
        "tcp-1",
        "--unit",
        "7",
        "--key-file",
        site.meter_key(meter),
        "--price-per-kwh",
        "1",
    )
    assert ran.rc == 0, ran.err
    before = site.snapshot()
    ran = await acli("commission", meter, "--config", site.config, "--yes")
    assert ran.rc == 2
    assert "PE1-000007 on tcp-1 unit 7 is unreachable" in ran.err
    assert site.snapshot() == before
    missing = await acli("commission", "PE1-999999", "--config", site.config)
    assert missing.rc == 2
    assert "meter PE1-999999 is not enrolled" in missing.err


# ---------------------------------------------------------------------------- export/import


@pytest.mark.asyncio
async def test_export_import_moves_meters_ledgers_and_encrypted_keys(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert site.enrol(1, "--credit", "12.34", "--customer-account", "ACC-9").rc == 0
    assert site.enrol(2, "--credit", "0.50").rc == 0
    plain = tmp_path / "plain.json"
    ran = cli("export", "--config", site.config, "--out", plain)
    assert ran.rc == 0, ran.err
    text = plain.read_text()
    with Store.open(site.store) as store:
        secrets = [m.record.meter_key.hex() for m in store.load_meters()]
    assert all(s not in text for s in secrets)

    monkeypatch.setenv("PREPAID_EDGE_PASSPHRASE", "correct horse battery")
    sealed = tmp_path / "sealed.json"
    ran = cli("export", "--config", site.config, "--out", sealed, "--with-keys", "--with-ledgers")
    assert ran.rc == 0, ran.err
    assert sealed.stat().st_mode & 0o777 == 0o600
    assert all(s not in sealed.read_text() for s in secrets)

    new = tmp_path / "new"
    assert cli("init", "--dir", new, "--gateway-id", "gw-new").rc == 0
    write_site_config(new, site.sim)
    no_keys = cli("import", plain, "--config", new / "gateway.toml")
    assert no_keys.rc == 2
    assert "no key" in no_keys.err
    monkeypatch.setenv("PREPAID_EDGE_PASSPHRASE", "wrong horse battery")
    wrong = cli("import", sealed, "--config", new / "gateway.toml")
    assert wrong.rc == 2
    assert "wrong passphrase" in wrong.err
    monkeypatch.setenv("PREPAID_EDGE_PASSPHRASE", "correct horse battery")
    ran = cli("import", sealed, "--config", new / "gateway.toml")
    assert ran.rc == 0, ran.err
    with Store.open(new / "gateway.db") as store:
        moved = store.load_meters()
    assert [m.record.meter_key.hex() for m in moved] == secrets
    rows = json.loads(cli("status", "--config", new / "gateway.toml", "--json").out)
    assert [(r["meter"], r["balance"], r["customer_account"]) for r in rows] == [
        ("PE1-000001", 1234, "ACC-9"),
        ("PE1-000002", 50, None),
    ]
    again = cli("import", sealed, "--config", new / "gateway.toml")
    assert again.rc == 2
    assert "already in the store" in again.err


def test_keys_of_later_epochs_move_sealed_with_the_keys(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys installed ahead of a key change move with --with-keys (never in the clear): a
    replacement box can carry out the key-change tokens the old one was waiting for."""
    assert site.enrol(1).rc == 0
    assert site.enrol(2).rc == 0
    vending = site.folder / "vending.key"
    for epoch in (1, 2):
        ran = cli("keys", "install", "--config", site.config, "--vending-key", vending,
                  "--epoch", epoch, "--meter", "PE1-000001")  # fmt: skip
        assert ran.rc == 0, ran.err
    with Store.open(site.store) as store:
        before = {m.record.meter_id: m.next_keys for m in store.load_meters()}
    assert sorted(before["PE1-000001"]) == [1, 2]
    assert before["PE1-000002"] == {}
    monkeypatch.setenv("PREPAID_EDGE_PASSPHRASE", "correct horse battery")
    sealed = tmp_path / "sealed.json"
    ran = cli("export", "--config", site.config, "--out", sealed, "--with-keys", "--with-ledgers")
    assert ran.rc == 0, ran.err
    text = sealed.read_text()
    assert "next_keys" in json.loads(text)
    assert all(k.hex() not in text for k in before["PE1-000001"].values())
    new = tmp_path / "new"
    assert cli("init", "--dir", new, "--gateway-id", "gw-new").rc == 0
    write_site_config(new, site.sim)
    ran = cli("import", sealed, "--config", new / "gateway.toml")
    assert ran.rc == 0, ran.err
    assert "2 keys of later epochs" in ran.out
    with Store.open(new / "gateway.db") as store:
        after = {m.record.meter_id: m.next_keys for m in store.load_meters()}
    assert after == before


def test_executed_command_ids_move_with_an_export(site: Site, tmp_path: Path) -> None:
    """A signed command executed on the old box is refused as a replay on the new one."""
    assert site.enrol(1, "--credit", "5").rc == 0
    now = datetime.now(UTC)
    with Store.open(site.store) as store:
        assert store.claim_command("dc-1", now + timedelta(hours=2), now)
        assert store.claim_command("old", now - timedelta(minutes=1), now - timedelta(hours=1))
    out = tmp_path / "site.json"
    assert cli("export", "--config", site.config, "--out", out).rc == 0
    new = tmp_path / "new"
    assert cli("init", "--dir", new, "--gateway-id", "gw-new").rc == 0
    write_site_config(new, site.sim)
    key_dir = tmp_path / "keys"
    key_dir.mkdir(mode=0o700)
    with Store.open(site.store) as store:
        for m in store.load_meters():
            write_secret_file(key_dir / f"{m.record.meter_id}.key", m.record.meter_key)
    ran = cli("import", out, "--config", new / "gateway.toml", "--key-dir", key_dir)
    assert ran.rc == 0, ran.err
    assert "1 executed command ids" in ran.out
    with Store.open(new / "gateway.db") as store:
        assert not store.claim_command("dc-1", now + timedelta(hours=2), now)  # a replay
        assert [i for i, _e, _x in store.executed_commands(now)] == ["dc-1"]


# ---------------------------------------------------------------------------- help


@pytest.mark.parametrize(
    "command", ["init", "scan", "enrol", "commission", "status", "export", "import"]
)
def test_every_command_has_help_with_an_example(command: str) -> None:
    ran = cli(command, "--help")
    assert ran.rc == 0
    assert "example" in ran.out
    assert "meter-provision " + command in ran.out


# ---------------------------------------------------------------------------- money units


@pytest.mark.asyncio
async def test_money_is_typed_in_the_currency_units_of_the_meter(site: Site) -> None:
    """KES has 2 decimals, JPY none: the same typed text is different minor units."""
    ran = site.enrol(1, "--credit", "50.25", "--price-per-kwh", "25.5", "--alarm1", "10",
                     "--alarm2", "2.50", "--reconnect-threshold", "-1", "--overdraft-limit", "3")  # fmt: skip
    assert ran.rc == 0, ran.err
    assert "credit 50.25 KES" in ran.out
    yen = site.enrol(2, "--credit", "500", "--currency", "JPY", "--price-per-kwh", "31",
                     "--alarm1", "300", "--alarm2", "100", "--max-balance", "90000")  # fmt: skip
    assert yen.rc == 0, yen.err
    assert "credit 500 JPY" in yen.out
    with Store.open(site.store) as store:
        kes, jpy = (m.state for m in store.load_meters())
    assert kes.ledger.balance == 5025
    assert kes.settings.tariffs.entries[0].tariff.energy == FlatPricing(Decimal(2550))
    assert (kes.settings.alarm1, kes.settings.alarm2) == (1000, 250)
    assert (kes.settings.reconnect_threshold, kes.settings.overdraft_limit) == (-100, 300)
    assert jpy.ledger.balance == 500
    assert jpy.settings.tariffs.entries[0].tariff.energy == FlatPricing(Decimal(31))
    assert (jpy.settings.alarm1, jpy.settings.max_balance) == (300, 90000)
    too_fine = site.enrol(3, "--credit", "1.5", "--currency", "JPY", "--price-per-kwh", "31")
    assert too_fine.rc == 2
    assert "credit: 1.5 has more than 0 decimals" in too_fine.err
    table = cli("status", "--config", site.config).out.splitlines()
    assert [line.split()[4] for line in table[1:]] == ["50.25", "500"]


@pytest.mark.asyncio
async def test_csv_credit_is_in_currency_units_and_bad_rows_name_file_and_line(
    site: Site,
) -> None:
    for unit in (1, 2):
        site.meter_key(f"PE1-{unit:06d}")
    path = site.folder / "street.csv"
    cases = [
        ("PE1-000001,tcp-1,1,PE1-000001.key,-500,A-1\n", "line 2: credit: '-500' is negative"),
        ("PE1-000001,tcp-1,1,PE1-000001.key,5\n", "line 2: row: 5 fields, the header has 6"),
        ("PE1-000001,tcp-1,1,PE1-000001.key\n", "line 2: row: 4 fields, the header has 6"),
    ]
    for row, message in cases:
        path.write_text("meter_id,bus,unit_id,key_file,credit,customer_account\n" + row)
        before = site.snapshot()
        ran = cli("enrol", "--config", site.config, "--csv", path, "--price-per-kwh", "25")
        assert ran.rc == 2
        assert ran.err.startswith(f"meter-provision enrol: error: {path} {message}")
        assert ran.err.count("\n") == 1
        assert site.snapshot() == before
    path.write_text(
        "meter_id,bus,unit_id,key_file,credit,customer_account\n"
        "PE1-000001,tcp-1,1,PE1-000001.key,12.50,A-1\n"
        "PE1-000002,tcp-1,2,PE1-000002.key,,\n"
    )
    ran = cli("enrol", "--config", site.config, "--csv", path, "--price-per-kwh", "25")
    assert ran.rc == 0, ran.err
    rows = json.loads(cli("status", "--config", site.config, "--json").out)
    assert [(r["meter"], r["balance"]) for r in rows] == [("PE1-000001", 1250), ("PE1-000002", 0)]


# ---------------------------------------------------------------------------- --update, --remove


def outbox_events(site: Site) -> list[tuple[str, int, dict[str, Any]]]:
    with Store.open(site.store) as store:
        return [(r.meter_id, r.seq, r.body) for r in store.outbox_pending()]


@pytest.mark.asyncio
async def test_update_changes_only_what_is_given_and_tells_the_headend(site: Site) -> None:
    assert site.enrol(1, "--credit", "50", "--customer-account", "ACC-1",
                      "--expected-serial", "WRONG").rc == 0  # fmt: skip
    assert site.enrol(2).rc == 0
    key3 = site.meter_key("PE1-000003")
    ran = cli("enrol", "--config", site.config, "--update", "--meter", "PE1-000001",
              "--expected-serial", "PE1-0007-000001", "--unit", "3", "--key-file", key3,
              "--alarm1", "20")  # fmt: skip
    assert ran.rc == 0, ran.err
    assert ran.out.splitlines() == [
        "updated PE1-000001: unit_id, key, settings, expected_serial",
        "commission PE1-000001 again: its address, key or expected serial changed",
    ]
    with Store.open(site.store) as store:
        meter = next(m for m in store.load_meters() if m.record.meter_id == "PE1-000001")
    assert meter.record.unit_id == 3
    assert meter.record.meter_key == bytes.fromhex(key3.read_text())
    assert meter.state.settings.alarm1 == 2000
    assert meter.state.ledger.balance == 5000  # untouched
    rows = json.loads(cli("status", "--config", site.config, "--json").out)
    assert rows[0]["customer_account"] == "ACC-1"  # kept
    ((meter_id, seq, body),) = outbox_events(site)
    assert (meter_id, seq, body["event"]) == ("PE1-000001", 1, "enrolment_updated")
    assert body["details"] == {
        "changed": {
            "unit_id": 3,
            "key": "replaced",
            "settings": {"alarm1": 2000},
            "expected_serial": "PE1-0007-000001",
        },
        "commissioning_needed": True,
    }


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--unit", "2"), "unit_id: unit 2 on bus tcp-1 is taken by PE1-000002"),
        (("--unit", "0"), "unit_id: '0' must be 1..247"),
        (("--bus", "tcp-9"), "bus: unknown bus 'tcp-9'"),
        (("--map", "sdm120"), "map sdm120 has no relay"),
        (("--alarm1", "1", "--alarm2", "2"), "alarm1 > alarm2"),
        (("--alarm1", "-1"), "alarm1: '-1' is negative"),
        (("--credit", "10"), "credit: not changed by --update"),
        (("--protected",), "protected: not changed by --update"),
        (("--key-epoch", "1"), "key_epoch: not changed by --update"),
        (("--key-file", "nope.key"), "key_file: cannot read"),
        ((), "PE1-000001: nothing to update"),
        (("--customer-account", "ACC-1"), "PE1-000001: already enrolled like that"),
    ],
)
@pytest.mark.asyncio
async def test_update_is_checked_as_an_enrolment_and_writes_nothing_when_refused(
    site: Site, extra: tuple[str, ...], message: str
) -> None:
    assert site.enrol(1, "--customer-account", "ACC-1").rc == 0
    assert site.enrol(2).rc == 0
    before = site.snapshot()
    ran = cli("enrol", "--config", site.config, "--update", "--meter", "PE1-000001", *extra)
    assert ran.rc == 2
    assert message in ran.err
    assert ran.err.count("\n") == 1
    assert site.snapshot() == before


@pytest.mark.asyncio
async def test_remove_queues_the_last_event_and_a_new_enrolment_goes_on_from_its_seq(
    site: Site,
) -> None:
    assert site.enrol(1, "--credit", "12.34", "--customer-account", "ACC-1").rc == 0
    assert cli("enrol", "--config", site.config, "--update", "--meter", "PE1-000001",
               "--customer-account", "ACC-2").rc == 0  # fmt: skip
    refused = cli("enrol", "--config", site.config, "--remove", "--meter", "PE1-000001",
                  "--unit", "1")  # fmt: skip
    assert (refused.rc, "--remove takes only --meter" in refused.err) == (2, True)
    ran = cli("enrol", "--config", site.config, "--remove", "--meter", "PE1-000001")
    assert ran.rc == 0, ran.err
    assert "removed PE1-000001 from the store (balance 12.34 KES when removed" in ran.out
    assert cli("status", "--config", site.config).out == "no meters enrolled\n"
    again = cli("enrol", "--config", site.config, "--remove", "--meter", "PE1-000001")
    assert (again.rc, "meter PE1-000001 is not enrolled" in again.err) == (2, True)
    events = outbox_events(site)
    assert [(m, s, b["event"]) for m, s, b in events] == [
        ("PE1-000001", 1, "enrolment_updated"),
        ("PE1-000001", 2, "enrolment_removed"),
    ]
    assert events[1][2]["details"] == {"balance": 1234, "debt": 0, "currency": "KES"}
    # Enrolled again (a replaced meter under the same id): its seq is never reused.
    assert site.enrol(1).rc == 0
    assert (
        json.loads(cli("status", "--config", site.config, "--json").out)[0]["customer_account"]
        is None
    )
    with Store.open(site.store) as store:
        assert store.last_seq("PE1-000001") == 2
        (meter,) = store.load_meters()
        store.apply(meter.state, [Publish("PE1-000001", "event", {"event": "x", "reason": "y"})],
                    datetime.now(UTC))  # fmt: skip
        assert store.last_seq("PE1-000001") == 3


@pytest.mark.asyncio
async def test_export_keeps_commissioning_results_and_import_round_trips_them(
    site: Site, tmp_path: Path
) -> None:
    serial = site.sim.layout.serial_number(1)
    assert site.enrol(1, "--expected-serial", serial).rc == 0
    assert site.enrol(2).rc == 0
    rc, text = await commission(site, "PE1-000001", 1, "--yes")
    assert rc == 0, text
    exported = tmp_path / "site.json"
    assert cli("export", "--config", site.config, "--out", exported).rc == 0
    doc = json.loads(exported.read_text())
    one, two = doc["meters"]
    assert [r["reason"] for r in one["commissioning"]] == ["pass"]
    assert two["commissioning"] == []
    new = tmp_path / "new"
    assert cli("init", "--dir", new, "--gateway-id", "gw-new").rc == 0
    write_site_config(new, site.sim)
    keys = tmp_path / "keys"
    keys.mkdir()
    for meter in ("PE1-000001", "PE1-000002"):
        (keys / f"{meter}.key").write_bytes(site.meter_key(meter).read_bytes())
        (keys / f"{meter}.key").chmod(0o600)
    ran = cli("import", exported, "--config", new / "gateway.toml", "--key-dir", keys)
    assert ran.rc == 0, ran.err
    status = json.loads(cli("status", "--config", new / "gateway.toml", "--json").out)
    assert [r["commissioned"] for r in status] == ["pass", None]
    again = tmp_path / "again.json"
    assert cli("export", "--config", new / "gateway.toml", "--out", again).rc == 0
    (moved,) = json.loads(again.read_text())["meters"][:1]
    original = one["commissioning"][0]
    copy = moved["commissioning"][0]
    assert copy["details"].pop("imported_from") == GW
    assert copy == original
    # The new box tells the headend it holds the commissioned meter.
    with Store.open(new / "gateway.db") as store:
        pending = store.outbox_pending()
    assert [(r.meter_id, r.body["event"]) for r in pending] == [("PE1-000001", "commissioned")]
