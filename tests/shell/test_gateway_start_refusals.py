"""The gateway refuses to start, before anything runs, with one line naming the file (and the config key for TLS files) and exit 2, never a traceback: the starter config straight after `init` (no ca.pem yet), an empty or garbage CA, missing or garbage certificate and key files (or a certificate without its key), and a store file of another kind it cannot write; a read-only store with a crash's leftovers is not refused but waited out (no exit, so no restart loop), with one log line."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.gateway_env import GatewayWorld
from tests.support.pki import TestCA

pytestmark = pytest.mark.slow


def start(config: Path, *, wrap: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(wrap or []), sys.executable, "-m", "gateway", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_one_line(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("meter-gateway run: error: "), done.stderr
    for needle in needles:
        assert needle in done.stderr, done.stderr


INIT_FLAGS = ("--gateway-id", "gw-1", "--self-signed-days", "3")


def init_site(folder: Path) -> Path:
    done = subprocess.run(
        [sys.executable, "-m", "provisioning", "init", "--dir", str(folder), *INIT_FLAGS],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return folder / "gateway.toml"


def test_the_starter_config_without_a_ca_names_the_file_and_key(tmp_path: Path) -> None:
    config = init_site(tmp_path / "site")
    done = start(config)
    assert_one_line(done, "mqtt.ca_file", str(tmp_path / "site" / "ca.pem"))
    assert not (tmp_path / "site" / "gateway.db.status.json").exists()  # nothing started


@pytest.mark.parametrize("content", [b"", b"not a certificate\n"], ids=["empty", "garbage"])
def test_an_unusable_ca_names_the_file_and_key(tmp_path: Path, content: bytes) -> None:
    config = init_site(tmp_path / "site")
    (tmp_path / "site" / "ca.pem").write_bytes(content)
    assert_one_line(start(config), "mqtt.ca_file", str(tmp_path / "site" / "ca.pem"))


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("cert_file", "missing"),
        ("cert_file", "garbage"),
        ("key_file", "missing"),
        ("key_file", "garbage"),
        ("key_file", "another key"),
    ],
)
def test_unusable_client_certificate_files_name_the_file_and_key(
    tmp_path: Path, key: str, problem: str
) -> None:
    ca = TestCA(tmp_path)
    client = ca.issue("gw-test", server=False)
    other = ca.issue("gw-other", server=False)
    world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
    world.enrol([1])
    files = {"ca_file": ca.cert_path, "cert_file": client.cert, "key_file": client.key}
    bad = tmp_path / f"bad-{key}.pem"
    if problem == "garbage":
        bad.write_text("-----BEGIN NONSENSE-----\n")
        bad.chmod(0o600)
        files[key] = bad
    elif problem == "missing":
        files[key] = bad
    else:
        files[key] = other.key
    data = world.config_data(tcp=("127.0.0.1", 1), broker=("127.0.0.1", 1))
    data["mqtt"]["brokers"][0]["tls"] = True
    data["mqtt"].update({k: str(v) for k, v in files.items()})
    config = world.write_config_data(data)
    assert_one_line(start(config), f"mqtt.{key}", str(files[key]))


def test_a_certificate_without_its_key_is_one_line(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    client = ca.issue("gw-test", server=False)
    world = GatewayWorld(tmp_path, tmp_path / "gateway.db")
    data = world.config_data(tcp=("127.0.0.1", 1), broker=("127.0.0.1", 1))
    data["mqtt"]["brokers"][0]["tls"] = True
    data["mqtt"].update(ca_file=str(ca.cert_path), cert_file=str(client.cert))
    done = start(world.write_config_data(data))
    assert_one_line(done, "mqtt.cert_file is set: mqtt.key_file is needed with it")


def _crash_leftovers(world: GatewayWorld) -> None:
    """A gateway killed while it ran: the store's -wal and -shm are left behind."""
    config = world.write_config(tcp=("127.0.0.1", 1))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    status = world.store_path.with_name(world.store_path.name + ".status.json")
    deadline = time.monotonic() + 30
    try:
        while not status.exists():  # another process's file: nothing to await
            assert proc.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert world.store_path.with_name("gateway.db-wal").exists()


@pytest.mark.parametrize("read_only", ["folder", "file"])
def test_a_read_only_store_with_crash_leftovers_is_waited_out_with_one_line(
    tmp_path: Path, read_only: str
) -> None:
    """The store (its folder, or the database file alone) on a read-only mount: the
    gateway says so once and waits for it (a restart loop would not help), and stops
    cleanly on SIGTERM meanwhile."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a read-only mount needs root and unshare (CI has both)")
    site = tmp_path / "site"
    site.mkdir(mode=0o700)
    world = GatewayWorld(tmp_path, site / "gateway.db")
    world.enrol([1])
    _crash_leftovers(world)
    config = world.write_config(tcp=("127.0.0.1", 1))
    target = site if read_only == "folder" else world.store_path
    mount = f"mount --bind {target} {target} && mount -o remount,ro,bind {target} {target}"
    wrap = ["unshare", "--mount", "--propagation", "private", "sh", "-c", f'{mount} && exec "$@"']
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*wrap, "sh", sys.executable, "-m", "gateway", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while "cannot be opened for writing" not in log.read_text():  # another process's log
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert "Read-only file system" in log.read_text() or "read-only" in log.read_text()
        assert proc.poll() is None  # waiting, not exiting into a restart loop
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
    text = log.read_text()
    assert code == 0, text
    assert "Traceback" not in text, text
    assert text.count("cannot be opened for writing") == 1, text
