"""Storage trouble on a small tmpfs the test mounts for the store: the disk fills up, and the file system turns read-only (an ext4 loop mount that aborts), while the gateway works and before it starts. The gateway process never exits or loops, says so in one log line and in its retained status, refuses a top-up it cannot make durable (storage_unavailable, nothing credited), and recovers by itself when the space comes back: the same top-up is then credited once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from meter_sim.clock import ScaledClock
from meter_sim.simulator import Simulator
from tests.integration.helpers import MessageLog, eventually, sim_start
from tests.support.gateway_env import GatewayWorld, meter_id, online_token, to_toml
from tests.support.gateway_process import GatewayProcess
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import TestClient

pytestmark = [pytest.mark.asyncio, pytest.mark.broker, pytest.mark.reliability]

ROOT = "prepaid/v1/gw-test"
DISK_BYTES = 4 << 20


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted for this test (root only: CI runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES},mode=0700", "tmpfs", str(mount)],
        check=True,
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def ext4_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB ext4 file system on a loop device, mounted for this test (root, a loop
    device and mkfs.ext4 needed: CI runs as root)."""
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
        pytest.skip("an ext4 loop mount needs root and mkfs.ext4 (CI runs as root)")
    image, mount = tmp_path / "ext4.img", tmp_path / "ext4"
    with image.open("wb") as f:
        f.truncate(16 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    mount.mkdir()
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=False)
    if mounted.returncode != 0:
        pytest.skip("no loop device here to mount an ext4 image on")
    mount.chmod(0o700)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk is full; the file, to delete to free the space."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass  # ENOSPC: full
    finally:
        os.close(fd)
    return filler


def remount(disk: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(disk)], check=True)


@dataclass
class Site:
    folder: Path
    disk: Path
    world: GatewayWorld
    sim: Simulator
    log: MessageLog
    headend: TestClient
    config: Path
    counter: int = 10
    gateway: GatewayProcess = field(init=False)

    def __post_init__(self) -> None:
        self.gateway = GatewayProcess(self.config, self.folder / "gateway.log")

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.gateway.proc

    @property
    def gateway_log(self) -> Path:
        return self.gateway.log

    def start(self) -> None:
        self.gateway.start()

    def stop(self) -> None:
        self.gateway.stop()

    def alive(self) -> bool:
        return self.gateway.alive()

    def logged(self, text: str) -> int:
        return self.gateway.logged(text)

    def storage(self) -> str | None:
        """The storage health in the latest retained status the headend saw."""
        statuses = [m for t, m in self.log.pull() if t == f"{ROOT}/status" and m.get("health")]
        return statuses[-1]["health"].get("storage") if statuses else None

    def top_up(self, amount: int, *, counter: int | None = None) -> tuple[str, dict[str, Any]]:
        if counter is None:
            self.counter += 1
            counter = self.counter
        request_id = f"t-{counter}-{len(self.log.pull())}"
        body = {"v": 1, "id": request_id, "cmd": "topup", "token": online_token(1, counter, amount)}
        self.headend.publish(f"{ROOT}/meters/{meter_id(1)}/cmd", json.dumps(body).encode())
        return request_id, body

    async def result(self, request_id: str, within: float = 15) -> dict[str, Any]:
        found = await eventually(
            lambda: [
                m for t, m in self.log.pull() if t.endswith("cmd/result") and m["id"] == request_id
            ],
            within,
            f"result of {request_id}",
        )
        return dict(found[0])

    def credited_total(self) -> int:
        return sum(
            m["details"]["credited"]
            for t, m in self.log.pull()
            if t.endswith(f"/meters/{meter_id(1)}/event") and m["event"] == "token_accepted"
        )


@asynccontextmanager
async def site_on(disk: Path, folder: Path, mosquitto: Mosquitto) -> AsyncIterator[Site]:
    store_dir = disk / "store"
    store_dir.mkdir(mode=0o700)
    world = GatewayWorld(folder, store_dir / "gateway.db")
    world.enrol([1, 2], opening_balance=100_000)
    start_f, start = sim_start(1.0)
    async with Simulator.start(meters=2, seed=3, clock=ScaledClock(1.0, start_f)) as sim:
        sim.set_load(1, 3000)
        sim.set_load(2, 3000)
        data = world.config_data(
            tcp=sim.tcp_address, broker=(mosquitto.host, mosquitto.port), start=start
        )
        config = folder / "gateway.toml"
        config.write_text(to_toml(data))
        os.chmod(config, 0o600)
        with TestClient(mosquitto, "headend") as headend:
            headend.subscribe(f"{ROOT}/#")
            site = Site(folder, disk, world, sim, MessageLog(headend), headend, config)
            try:
                yield site
            finally:
                site.stop()


async def test_a_full_disk_while_working_degrades_and_recovers(
    tmp_path: Path, small_disk: Path, mosquitto: Mosquitto
) -> None:
    async with site_on(small_disk, tmp_path, mosquitto) as site:
        site.start()
        await eventually(lambda: site.storage() == "ok", 20, "online, storage ok")
        await eventually(lambda: site.log.of(meter_id(1), "balance"), 10, "charging")
        filler = fill(small_disk)
        problem = await eventually(
            lambda: (s := site.storage()) not in (None, "ok") and s, 30, "storage trouble"
        )
        request_id, body = site.top_up(700)
        refused = await site.result(request_id)
        assert refused["error"] == "storage_unavailable", refused
        assert site.alive()
        assert site.logged("store cannot commit") == 1
        assert site.logged("Traceback") == 0, site.gateway_log.read_text()[-3000:]

        filler.unlink()
        await eventually(lambda: site.storage() == "ok", 90, "recovered")
        # The refused purchase was never recorded: sent again, it is credited, once.
        site.headend.publish(f"{ROOT}/meters/{meter_id(1)}/cmd", json.dumps(body).encode())
        again = await eventually(
            lambda: [
                m for t, m in site.log.pull() if t.endswith("cmd/result") and m["id"] == request_id
            ][1:],
            20,
            "the retried top-up",
        )
        assert again[0]["ok"] is True, again
        # The event comes through the outbox, the result straight away: wait for it.
        await eventually(lambda: site.credited_total() >= 700, 20, "token_accepted")
        assert site.credited_total() == 700
        assert site.alive()
        print(f"full disk while working: '{problem}', top-up refused, recovered, credited once")


async def test_a_file_system_that_turns_read_only_while_working_degrades(
    tmp_path: Path, ext4_disk: Path, mosquitto: Mosquitto
) -> None:
    """ext4 turns itself read-only on an error (errors=remount-ro) under every writer, as
    no remount can; ``remount,abort`` forces that error. It cannot be made writable again
    without unmounting it, so this test ends at the refusal."""
    async with site_on(ext4_disk, tmp_path, mosquitto) as site:
        site.start()
        await eventually(lambda: site.storage() == "ok", 20, "online, storage ok")
        await eventually(lambda: site.log.of(meter_id(1), "balance"), 10, "charging")
        remount(ext4_disk, "abort")
        assert "ro" in _mount_options(ext4_disk) or "emergency_ro" in _mount_options(ext4_disk)
        problem = await eventually(
            lambda: (s := site.storage()) not in (None, "ok") and s, 30, "storage trouble"
        )
        request_id, _body = site.top_up(700)
        refused = await site.result(request_id)
        assert refused["error"] == "storage_unavailable", refused
        assert site.credited_total() == 0
        assert site.alive()
        assert site.logged("store cannot commit") == 1
        assert site.logged("Traceback") == 0, site.gateway_log.read_text()[-3000:]
        print(f"read-only file system while working: '{problem}', top-up refused, no exit")


def _mount_options(mount: Path) -> set[str]:
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if fields[1] == str(mount):
            return set(fields[3].split(","))
    raise AssertionError(f"{mount} is not mounted")


async def test_a_read_only_store_with_crash_leftovers_at_start_is_waited_out(
    tmp_path: Path, small_disk: Path, mosquitto: Mosquitto
) -> None:
    # (A remount to read-only is refused under a process writing to it: the read-only
    # case while working is the ext4 test above.)
    async with site_on(small_disk, tmp_path, mosquitto) as site:
        site.start()
        await eventually(lambda: site.storage() == "ok", 20, "first start")
        await eventually(lambda: site.log.of(meter_id(1), "balance"), 10, "charging")
        assert site.proc is not None
        site.proc.kill()  # a crash: the write-ahead log is left behind
        site.proc.wait()
        store = site.world.store_path
        assert store.with_name(store.name + "-wal").exists()
        remount(small_disk, "ro")
        try:
            site.start()
            # Either it cannot open the store and waits, or it opens it read-only (the
            # WAL lets it) and cannot commit: one line either way, and it runs on.
            await eventually(
                lambda: (
                    site.logged("cannot be opened for writing") + site.logged("store cannot commit")
                    == 1
                ),
                20,
                "one line saying what is wrong",
            )
            assert site.alive(), site.gateway_log.read_text()[-2000:]
            assert site.logged("Traceback") == 0, site.gateway_log.read_text()[-2000:]
            seen = len(site.log.pull())
        finally:
            remount(small_disk, "rw")

        def storage_ok_since() -> bool:
            return any(
                t == f"{ROOT}/status" and (m.get("health") or {}).get("storage") == "ok"
                for t, m in site.log.pull()[seen:]
            )

        await eventually(storage_ok_since, 90, "writable again")
        request_id, _body = site.top_up(400)
        assert (await site.result(request_id))["ok"] is True
        assert site.alive()


async def test_a_full_disk_at_start_is_waited_out(
    tmp_path: Path, small_disk: Path, mosquitto: Mosquitto
) -> None:
    async with site_on(small_disk, tmp_path, mosquitto) as site:
        site.start()
        await eventually(lambda: site.storage() == "ok", 20, "first start")
        site.stop()
        filler = fill(small_disk)
        site.start()
        await eventually(lambda: site.logged("cannot be opened for writing") == 1, 20, "waiting")
        assert site.alive(), site.gateway_log.read_text()[-2000:]  # no exit, no restart loop
        assert site.logged("Traceback") == 0
        filler.unlink()
        starts = site.logged("writable again: starting")
        await eventually(lambda: site.logged("writable again: starting") > starts, 90, "started")
        request_id, _body = site.top_up(300)
        assert (await site.result(request_id))["ok"] is True
        assert shutil.disk_usage(small_disk).free > 0
