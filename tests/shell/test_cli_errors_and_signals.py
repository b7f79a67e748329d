"""Each CLI run as a person has it (the installed console scripts, in a subprocess): bad arguments, missing files, garbage and invalid configs and bad values end in one line `PROG COMMAND: error: ...` with exit 2 (1 for a failure found), a run with no command exits 2 with its usage, and Ctrl-C or SIGTERM during a scan, at commissioning's relay question or while it waits for the keypad token ends in one line with exit 130 or 143, keeping what was done (the partial scan table, the relay as it was, no report), and Ctrl-C at export's or import's passphrase prompt on a terminal writes nothing — never a traceback."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from gateway.public import holder
from gateway.store import Store
from protocol.cli import package_version
from provisioning.sealed_keys import PASSPHRASE_ENV
from tests.shell.test_provision_cli import cli
from tests.support.gateway_env import GatewayWorld, to_toml
from tests.support.pty_terminal import CTRL_C, Terminal

pytestmark = pytest.mark.asyncio

BIN = Path(sys.executable).parent
METER = "PE1-000001"


@dataclass
class Ran:
    rc: int
    out: str
    err: str


def _env() -> dict[str, str]:
    return {**os.environ, "PREPAID_EDGE_VEND_LEDGER": "counters.json"}


async def start(prog: str, *args: object, cwd: Path) -> asyncio.subprocess.Process:
    """A console script as a person runs it (``BIN/prog``), its pipes open."""
    return await asyncio.create_subprocess_exec(
        str(BIN / prog),
        *map(str, args),
        cwd=cwd,
        env=_env(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def run(prog: str, *args: object, cwd: Path) -> Ran:
    proc = await start(prog, *args, cwd=cwd)
    out, err = await asyncio.wait_for(proc.communicate(b""), 60)
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


def assert_clean(ran: Ran) -> None:
    assert "Traceback" not in ran.out + ran.err, ran.err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def simulator(*args: str, cwd: Path) -> AsyncIterator[dict[str, str]]:
    """``meter-sim serve ARGS`` running; what it printed (kind -> address) once ready."""
    proc = await start("meter-sim", "serve", *args, cwd=cwd)
    assert proc.stdout is not None
    try:
        printed = await read_until(proc.stdout, "ready:")
        yield {
            kind: rest.split(" ")[0]
            for kind, _, rest in (line.partition(" ") for line in printed.splitlines())
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


@dataclass
class Site:
    folder: Path
    control: str

    async def relay_closed(self, unit: int) -> bool:
        """What the simulated meter's relay is, asked through its control port."""
        ran = await run("meter-sim", "ctl", "--control", self.control, "state", unit,
                        cwd=self.folder)  # fmt: skip
        assert ran.rc == 0, ran.err
        closed = json.loads(ran.out)["relay_closed"]
        assert isinstance(closed, bool)
        return closed


@pytest_asyncio.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    """A gateway folder (init, a TCP bus on a running ``meter-sim``, a vending key,
    PE1-000001 enrolled) and files a person gets wrong."""
    sim_args = ["--meters", "2", "--tcp", "127.0.0.1:0", "--control", "127.0.0.1:0", "--seed", "7"]
    async with simulator(*sim_args, cwd=tmp_path) as printed:
        folder = tmp_path / "gw"
        assert cli("init", "--dir", folder, "--gateway-id", "gw-err").rc == 0
        world = GatewayWorld(folder, folder / "gateway.db", gateway_id="gw-prov")
        config = world.config_data(tcp=address(printed["modbus-tcp"]), timeout=0.3)
        (folder / "gateway.toml").write_text(to_toml(config))
        assert cli("keys", "new-vending-key", "--out", folder / "vending.key").rc == 0
        key = folder / f"{METER}.key"
        made = cli("keys", "meter-key", "--vending-key", folder / "vending.key", "--meter",
                   METER, "--out", key)  # fmt: skip
        assert made.rc == 0, made.err
        enrolled = cli("enrol", "--config", folder / "gateway.toml", "--meter", METER, "--bus",
                       "tcp-1", "--unit", "1", "--key-file", key, "--price-per-kwh", "25.50",
                       "--credit", "50")  # fmt: skip
        assert enrolled.rc == 0, enrolled.err
        (folder / "garbage.toml").write_text("gateway_id = [unclosed\n")
        (folder / "invalid.toml").write_text(
            (folder / "gateway.toml").read_text().replace('"gw-prov"', '"a b"')
        )
        (folder / "nostore.toml").write_text(
            (folder / "gateway.toml").read_text().replace("gateway.db", "nowhere.db")
        )
        (folder / "garbage.json").write_text("{not json")
        (folder / "short.csv").write_text(
            "meter_id,bus,unit_id,key_file,credit\nPE1-000002,tcp-1,2,PE1-000001.key\n"
        )
        (folder / "negative.csv").write_text(
            "meter_id,bus,unit_id,key_file,credit\nPE1-000002,tcp-1,2,PE1-000001.key,-500\n"
        )
        (folder / "plan.toml").write_text("[[faults]\n")
        yield Site(folder, printed["control"])


ENROL = ["enrol", "--meter", "PE1-000002", "--bus", "tcp-1", "--unit", "2",
         "--key-file", f"{METER}.key", "--price-per-kwh", "25"]  # fmt: skip
VEND = ["vend", "--vending-key", "vending.key", "--meter", METER]

#: (program, arguments, exit code, what stderr says)
ERROR_PATHS: list[tuple[str, list[str], int, str]] = [
    ("meter-provision", ["bogus"], 2, "invalid choice: 'bogus'"),
    ("meter-provision", ["scan", "--bus"], 2, "meter-provision scan: error: argument --bus"),
    ("meter-provision", ["scan", "--bus", "tcp-1", "--timeout", "x"], 2, "invalid float value"),
    ("meter-provision", ["scan", "--bus", "tcp-1", "--timeout", "0"], 2, "give 0 < seconds"),
    ("meter-provision", ["scan", "--bus", "tcp-9"], 2, "bus 'tcp-9' is not in the config"),
    ("meter-provision", ["status", "--config", "missing.toml"], 2, "missing.toml: cannot read"),
    ("meter-provision", ["status", "--config", "garbage.toml"], 2, "not valid TOML"),
    ("meter-provision", ["status", "--config", "invalid.toml"], 2, "invalid.toml: gateway_id"),
    ("meter-provision", ["status", "--config", "nostore.toml"], 2, "run meter-provision init"),
    ("meter-provision", ["enrol", "--csv", "missing.csv"], 2, "cannot read missing.csv"),
    ("meter-provision", [*ENROL, "--credit=-1"], 2, "credit: '-1' is negative"),
    ("meter-provision", [*ENROL, "--credit", "ten"], 2, "credit: 'ten' is not an amount"),
    ("meter-provision", [*ENROL, "--key-file", "nope.key"], 2, "key_file: cannot read nope.key"),
    ("meter-provision", ["enrol", "--csv", "short.csv", "--price-per-kwh", "25"], 2,
     "short.csv line 2: row: 4 fields, the header has 5"),
    ("meter-provision", ["enrol", "--csv", "negative.csv", "--price-per-kwh", "25"], 2,
     "negative.csv line 2: credit: '-500' is negative"),
    ("meter-provision", ["enrol", "--update", "--meter", METER, "--credit", "5"], 2,
     "credit: not changed by --update"),
    ("meter-provision", ["enrol", "--update", "--meter", "PE1-999999", "--unit", "3"], 2,
     "meter PE1-999999 is not enrolled"),
    ("meter-provision", ["enrol", "--remove"], 2, "--remove needs --meter"),
    ("meter-provision", ["commission", "PE1-999999"], 2, "meter PE1-999999 is not enrolled"),
    ("meter-provision", [*VEND, "--amount", "-5"], 2, "--amount -5 must be positive"),
    ("meter-provision", [*VEND, "--amount", "five"], 2, "--amount 'five' is not an amount"),
    ("meter-provision", ["vend", "--vending-key", "nope.key", "--meter", METER, "--amount", "5"],
     2, "cannot read nope.key"),
    ("meter-provision", ["import", "garbage.json"], 2, "cannot read garbage.json"),
    ("meter-provision", ["import", "missing.json"], 2, "cannot read missing.json"),
    ("meter-provision", ["export", "--out", "gateway.toml"], 2, "refusing to overwrite"),
    ("meter-provision", ["keys", "meter-key", "--vending-key", "vending.key", "--meter", METER,
                         "--epoch", "x"], 2, "argument --epoch: invalid int value"),
    ("meter-sim", ["bogus"], 2, "invalid choice: 'bogus'"),
    ("meter-sim", ["serve", "--meters", "x"], 2, "argument --meters: invalid int value"),
    ("meter-sim", ["serve", "--no-tcp"], 2, "--no-tcp leaves nothing to serve"),
    ("meter-sim", ["serve", "--tcp", "127.0.0.1:0", "--baud", "9600"], 2,
     "--baud emulates an RTU line"),
    ("meter-sim", ["serve", "--tcp", "127.0.0.1:0", "--faults", "missing.toml"], 2,
     "missing.toml: cannot read"),
    ("meter-sim", ["serve", "--tcp", "127.0.0.1:0", "--faults", "plan.toml"], 2,
     "plan.toml: not valid TOML"),
    ("meter-sim", ["serve", "--tcp", "127.0.0.1:0", "--start", "noon"], 2,
     "--start 'noon' is not an ISO 8601 time"),
    ("meter-sim", ["ctl", "keypad"], 2, "the following arguments are required"),
    ("meter-gateway", ["bogus"], 2, "invalid choice: 'bogus'"),
    ("meter-gateway", ["run", "--config", "missing.toml"], 2, "missing.toml: cannot read"),
    ("meter-gateway", ["run", "--config", "garbage.toml"], 2, "not valid TOML"),
    ("meter-gateway", ["run", "--config", "invalid.toml"], 2, "invalid.toml: gateway_id"),
    ("meter-gateway", ["status", "--config", "missing.toml"], 2, "missing.toml: cannot read"),
    ("meter-gateway", ["status"], 1, "is the gateway running?"),  # ./gateway.toml by default
]  # fmt: skip


@pytest.mark.parametrize(("prog", "argv", "code", "says"), ERROR_PATHS)
async def test_error_paths_are_one_line_with_the_right_exit_code(
    site: Site, prog: str, argv: list[str], code: int, says: str
) -> None:
    before = (site.folder / "gateway.db").read_bytes()
    ran = await run(prog, *argv, cwd=site.folder)
    assert_clean(ran)
    assert ran.rc == code, ran
    assert says in ran.err, ran.err
    assert ran.err.count("\n") == 1, ran.err
    # PROG, then the (sub)command named as argparse names it, then "error:"
    assert re.match(rf"{prog}( [a-z][a-z-]*)*: error: \S", ran.err), ran.err
    if argv[0] != "bogus":
        assert ran.err.startswith(f"{prog} {argv[0]}"), ran.err
    assert ran.out == "" or prog == "meter-sim", ran.out
    assert (site.folder / "gateway.db").read_bytes() == before  # nothing written


async def test_ctl_without_a_simulator_is_a_failure_found(tmp_path: Path) -> None:
    ran = await run("meter-sim", "ctl", "--control", f"127.0.0.1:{free_port()}", "state", "1",
                    cwd=tmp_path)  # fmt: skip
    assert_clean(ran)
    assert ran.rc == 1
    assert ran.err.startswith("meter-sim ctl: error: no simulator at")


@pytest.mark.parametrize("prog", ["meter-provision", "meter-sim", "meter-gateway"])
async def test_version_and_no_command(tmp_path: Path, prog: str) -> None:
    version = await run(prog, "--version", cwd=tmp_path)
    assert (version.rc, version.out) == (0, f"{prog} {package_version()}\n")
    bare = await run(prog, cwd=tmp_path)
    assert_clean(bare)
    assert bare.rc == 2
    usage, error = bare.err.splitlines()
    assert usage.startswith(f"usage: {prog} ")
    assert error == f"{prog}: error: give a command (see --help)"


async def test_gateway_status_says_never_for_a_gateway_that_never_synced(site: Site) -> None:
    status = site.folder / "gateway.db.status.json"
    status.write_text(
        json.dumps(
            {
                "gateway": "gw-err",
                "written_at": "2026-01-01T00:00:00+00:00",
                "broker": "disconnected",
                "broker_address": None,
                "health": {"buses": {"tcp-1": "ok"}, "meters_total": 1, "meters_online": 1,
                           "outbox_depth": 3, "last_sync": None},
            }
        )
    )  # fmt: skip
    ran = await run("meter-gateway", "status", cwd=site.folder)
    assert ran.rc == 0, ran.err
    assert "outbox: 3 messages waiting; last sync never" in ran.out
    assert "None" not in ran.out


# ---------------------------------------------------------------------------- signals


async def read_until(stream: asyncio.StreamReader, marker: str, limit: float = 30) -> str:
    """What ``stream`` gave until ``marker`` appeared (progress lines have no newline)."""
    seen = ""
    async with asyncio.timeout(limit):
        while marker not in seen:
            chunk = await stream.read(256)
            assert chunk, f"the stream ended before {marker!r}: {seen!r}"
            seen += chunk.decode()
    return seen


async def finish(proc: asyncio.subprocess.Process, seen_err: str = "") -> Ran:
    """The process's exit after a signal: it must end by itself, at once."""
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), seen_err + err.decode())


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_a_stopped_scan_prints_its_partial_table(
    tmp_path: Path, signum: signal.Signals, code: int
) -> None:
    rtu = ["--meters", "3", "--no-tcp", "--rtu-pty", "--baud", "9600"]
    async with simulator(*rtu, cwd=tmp_path) as printed:
        world = GatewayWorld(tmp_path, tmp_path / "gateway.db", gateway_id="gw-scan")
        data = world.config_data(rtu=printed["rtu-pty"])
        data["buses"][0]["baud"] = 9600  # a real line's pace: about 0.6 s an absent unit
        (tmp_path / "gateway.toml").write_text(to_toml(data))
        proc = await start("meter-provision", "scan", "--bus", "rtu-1", "--units", "1-40",
                           cwd=tmp_path)  # fmt: skip
        assert proc.stderr is not None
        seen = await read_until(proc.stderr, "5/40 units")
        proc.send_signal(signum)
        ran = await finish(proc, seen)
    assert_clean(ran)
    assert ran.rc == code
    assert [line.split()[:2] for line in ran.out.splitlines()] == [
        ["unit", "map"], ["1", "pe1"], ["2", "pe1"], ["3", "pe1"],
    ]  # fmt: skip
    *progress, last = ran.err.split("\n")[:-1]
    assert progress[-1].rstrip().endswith("s left")  # the progress line, ended
    assert last.startswith(f"meter-provision scan: interrupted by {signum.name}; ")
    assert "of 40 units scanned" in last
    assert "40/40" not in ran.err


def commission_events(folder: Path) -> list[str]:
    with Store.open(folder / "gateway.db") as store:
        return [str(e.get("event")) for e in store.events(METER)]


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_a_stop_at_the_relay_question_ends_commissioning_at_once(
    site: Site, signum: signal.Signals, code: int
) -> None:
    proc = await start("meter-provision", "commission", METER, cwd=site.folder)
    assert proc.stderr is not None
    seen = await read_until(proc.stderr, "[y/N]")
    proc.send_signal(signum)  # the first one ends it: no second Ctrl-C needed
    ran = await finish(proc, seen)
    assert_clean(ran)
    assert ran.rc == code
    assert ran.err.splitlines()[-1] == (
        f"meter-provision commission: interrupted by {signum.name}; no report stored"
    )
    assert commission_events(site.folder) == []
    assert await site.relay_closed(1) is True


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_a_stop_while_waiting_for_the_keypad_token(
    site: Site, signum: signal.Signals, code: int
) -> None:
    proc = await start("meter-provision", "commission", METER, "--yes", cwd=site.folder)
    assert proc.stdout is not None
    await read_until(proc.stdout, "type this test token on the meter's keypad")
    proc.send_signal(signum)
    proc.send_signal(signum)  # an impatient second press changes nothing
    ran = await finish(proc)
    assert_clean(ran)
    assert ran.rc == code
    assert ran.err.count("\n") == 1, ran.err
    assert ran.err.startswith(f"meter-provision commission: interrupted by {signum.name}")
    assert commission_events(site.folder) == []
    assert await site.relay_closed(1) is True  # switched and back before the wait


async def ctrl_c_at_the_prompt(folder: Path, command: str) -> tuple[int, list[str]]:
    """``command`` typed in a terminal of its own, with no passphrase in the environment
    (so getpass asks on the terminal), and Ctrl-C typed at the passphrase prompt: the exit
    status and the terminal's lines."""
    env = {k: v for k, v in _env().items() if k != PASSPHRASE_ENV}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    terminal = Terminal("prompt", folder, env, folder.parent / "terminal-state")
    typed = await terminal.type_command(command)
    deadline = asyncio.get_running_loop().time() + 60
    try:
        while "passphrase for the meter keys: " not in typed.raw:
            assert not typed.ended, f"it ended before asking: {typed.raw!r}"
            await typed.next_change(deadline)
        typed.type(CTRL_C)
        code = await typed.finish(deadline)
    finally:
        await typed.kill()
    return code, [line for line in typed.raw.replace("\r", "").split("\n") if line.strip()]


async def test_ctrl_c_at_the_export_and_import_passphrase_prompts(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = site.folder
    listing = sorted(p.name for p in folder.iterdir())
    store = (folder / "gateway.db").read_bytes()
    code, lines = await ctrl_c_at_the_prompt(
        folder, "meter-provision export --out x.json --with-keys"
    )
    assert "Traceback" not in "\n".join(lines), lines
    assert code == 130, lines
    assert lines[-1] == "meter-provision export: interrupted by SIGINT", lines
    # the prompt's line was ended before the last line
    assert lines[-2].startswith("passphrase for the meter keys: "), lines
    assert sorted(p.name for p in folder.iterdir()) == listing  # no x.json, no temporary file

    monkeypatch.setenv(PASSPHRASE_ENV, "correct horse battery")
    made = cli("export", "--config", folder / "gateway.toml", "--out", folder.parent / "site.json",
               "--with-keys")  # fmt: skip
    assert made.rc == 0, made.err
    monkeypatch.delenv(PASSPHRASE_ENV)
    listing = sorted(p.name for p in folder.iterdir())
    code, lines = await ctrl_c_at_the_prompt(folder, "meter-provision import ../site.json")
    assert "Traceback" not in "\n".join(lines), lines
    assert code == 130, lines
    assert lines[-1] == "meter-provision import: interrupted by SIGINT", lines
    # the store's lock file stays, as every command that locks the store leaves it: released
    assert sorted(p.name for p in folder.iterdir() if p.name != "gateway.db.lock") == listing
    assert holder(folder / "gateway.db") is None
    assert (folder / "gateway.db").read_bytes() == store  # nothing imported


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_services_stop_cleanly_on_a_signal(tmp_path: Path, signum: signal.Signals) -> None:
    """meter-sim serve and meter-gateway run: a signal is their normal stop (exit 0)."""
    sim = await start("meter-sim", "serve", "--meters", "2", "--tcp", "127.0.0.1:0",
                      cwd=tmp_path)  # fmt: skip
    assert sim.stdout is not None
    await read_until(sim.stdout, "ready:")  # started by hand: this test stops it itself
    world = GatewayWorld(tmp_path, tmp_path / "gateway.db", gateway_id="gw-stop")
    world.write_config()  # no buses, no broker (written owner-only, as the gateway wants)
    gateway = await start("meter-gateway", "run", cwd=tmp_path)
    assert gateway.stderr is not None
    seen = await read_until(gateway.stderr, "messages waiting")
    for proc, printed in ((sim, ""), (gateway, seen)):
        proc.send_signal(signum)
        ran = await finish(proc, printed)
        assert_clean(ran)
        assert ran.rc == 0, ran.err
