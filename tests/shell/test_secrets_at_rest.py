"""Secrets at rest: `meter-provision init`, a running `meter-gateway` and `meter-provision import` create the store's folder 0700 and its files (database, -wal, -shm, status, lock, enrolment extras) and the config 0600 whatever the umask, and the gateway refuses to start, with one line naming the path and the chmod that fixes it and exit 2, on any of them open to group or others."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.store import Store
from protocol.tokens.keys import derive_meter_key
from provisioning.key_files import write_secret_file
from tests.support.gateway_env import VENDING_KEY, GatewayWorld, meter_id

pytestmark = pytest.mark.slow


def run(module: str, *argv: object, umask: int = 0o022, cwd: Path | None = None) -> list[str]:
    """``python -m MODULE ARGV`` under ``umask`` (as a shell that set it would start it)."""
    return [
        "sh",
        "-c",
        f'umask {umask:03o} && exec "$@"',
        "sh",
        sys.executable,
        "-m",
        module,
        *(str(a) for a in argv),
    ]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def store_files(folder: Path) -> dict[str, int]:
    return {p.name: mode(p) for p in sorted(folder.iterdir()) if p.name.startswith("gateway.db")}


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_init_makes_the_folder_and_its_secrets_owner_only(tmp_path: Path, umask: int) -> None:
    site = tmp_path / "etc" / "prepaid-edge"
    done = subprocess.run(
        run("provisioning", "init", "--dir", site, "--gateway-id", "gw-1", umask=umask),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert mode(site) == 0o700
    assert mode(site / "gateway.toml") == 0o600
    assert mode(site / "gateway.key") == 0o600
    assert store_files(site) == {"gateway.db": 0o600}


def test_a_running_gateway_creates_its_store_files_owner_only(tmp_path: Path) -> None:
    """Under umask 000 the gateway creates a new store, its write-ahead log, its shared
    memory, its status file and its lock file, each 0600."""
    world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
    config = world.write_config(tcp=("127.0.0.1", 1))
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            run("gateway", "run", "--config", config, umask=0o000),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        expected = {"gateway.db", "gateway.db-wal", "gateway.db-shm"}
        expected |= {"gateway.db.status.json", "gateway.db.lock"}
        deadline = time.monotonic() + 30
        while not expected <= set(store_files(tmp_path)):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, (store_files(tmp_path), log.read_text())
            time.sleep(0.05)
        files = store_files(tmp_path)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert {name: files[name] for name in expected} == dict.fromkeys(expected, 0o600)
    assert mode(tmp_path) == 0o700
    assert mode(config) == 0o600


def test_import_writes_the_store_owner_only(tmp_path: Path) -> None:
    """A replacement box: the export of one site imported into a new one under umask 000."""
    old = GatewayWorld(tmp_path / "old", tmp_path / "old" / "gateway.db")
    old.folder.mkdir(mode=0o700)
    old.enrol([1, 2])
    old_config = old.write_config(tcp=("127.0.0.1", 1))
    export = tmp_path / "site.json"
    done = subprocess.run(
        run("provisioning", "export", "--config", old_config, "--out", export, "--with-ledgers"),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    for unit in (1, 2):
        key = derive_meter_key(VENDING_KEY, meter_id(unit), 0)
        write_secret_file(keys / f"{meter_id(unit)}.key", key.secret)
    new = tmp_path / "new"
    new_config = new / "gateway.toml"
    for argv in (
        ("init", "--dir", new, "--gateway-id", "gw-test"),
        ("import", export, "--config", new_config, "--key-dir", keys),
    ):
        done = subprocess.run(
            run("provisioning", *argv, umask=0o000), capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
        if argv[0] == "init":  # the engineer names the old site's bus in the new config
            with new_config.open("a") as f:
                f.write('\n[[buses]]\nname = "tcp-1"\nkind = "tcp"\nhost = "127.0.0.1"\n')
    with Store.open(new / "gateway.db") as store:
        assert len(store.load_meters()) == 2
    files = store_files(new)
    assert files == dict.fromkeys(files, 0o600)
    assert "gateway.db.enrolment.json" in files
    assert mode(new) == 0o700
    assert mode(new_config) == 0o600


@pytest.mark.parametrize(
    ("target", "bad_mode", "fix"),
    [
        ("site", 0o755, "chmod 700"),
        ("site/gateway.db", 0o644, "chmod 600"),
        ("site/gateway.db-wal", 0o604, "chmod 600"),
        ("site/gateway.db.status.json", 0o640, "chmod 600"),
        ("site/gateway.db.lock", 0o620, "chmod 600"),
        ("gateway.toml", 0o644, "chmod 600"),
    ],
)
def test_the_gateway_refuses_to_start_on_files_open_to_others(
    tmp_path: Path, target: str, bad_mode: int, fix: str
) -> None:
    site = tmp_path / "site"
    site.mkdir(mode=0o700)
    world = GatewayWorld(tmp_path, site / "gateway.db")
    world.enrol([1])
    config = world.write_config(tcp=("127.0.0.1", 1))
    for name in ("gateway.db-wal", "gateway.db.status.json", "gateway.db.lock"):
        (site / name).touch(mode=0o600)
    path = tmp_path / target
    os.chmod(path, bad_mode)
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("meter-gateway run: error: "), done.stderr
    assert f"{fix} {path}" in done.stderr, done.stderr
    assert f"mode {bad_mode:04o}" in done.stderr, done.stderr
