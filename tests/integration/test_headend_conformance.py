"""An integrator's headend, written from docs/mqtt.md, docs/tokens.md, docs/simulator.md, docs/field-guide.md and the schema files alone (it imports only the standard library, pytest, paho, cryptography and jsonschema, and runs its own Mosquitto with the page's broker settings), against a site provisioned with the console scripts: cut-off, keypad and online top-ups, replays, signed commands (and their refusals), a command queued while the gateway is down, a gateway SIGKILL and a broker SIGKILL; every message matches its schema, each meter's seq is gap-free after resends, the money adds up to the minor unit, the Last Will and status ages are right, and the broker's retained view is each meter's latest balance."""

from __future__ import annotations

import ast
import base64
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jsonschema import Draft202012Validator
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

pytestmark = [pytest.mark.broker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GW = "gw-conf"
CLIENT_ID = "hq-conf"
REPLIES = f"headend/{CLIENT_ID}/replies"
SPEED = 60.0
CURRENCY = "KES"
M1, M2, M3 = "PE1-000001", "PE1-000002", "PE1-000003"
#: Opening credit in minor units (enrolled as currency units: 1.50, 50.00, 20.00).
OPENING = {M1: 150, M2: 5000, M3: 2000}
LOADS_W = {M1: 6000, M2: 2000, M3: 0}
#: How long after the gateway's `online` status we give it to make the retained view
#: current again: docs/mqtt.md promises 5 s plus 1 s per 1,000 meters (here 3).
REBIRTH_WITHIN_S = 5.0 + 3 / 1000
KINDS = ("reading", "balance", "event")


# ---------------------------------------------------------------- from docs/tokens.md 4.1


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _field(text: str) -> bytes:
    return bytes([len(text)]) + text.encode("ascii")


def online_token(key: Ed25519PrivateKey, key_id: str, meter: str, counter: int, amount: int) -> str:
    now = datetime.now(UTC)
    body = (
        b"\x01" + _field(key_id) + _field(meter) + (0).to_bytes(2, "big")
        + counter.to_bytes(2, "big") + b"\x00" + amount.to_bytes(4, "big")
        + CURRENCY.encode() + uuid.uuid4().bytes
        + int(now.timestamp()).to_bytes(8, "big")
        + int((now + timedelta(days=1)).timestamp()).to_bytes(8, "big")
    )  # fmt: skip
    return b64url(body + key.sign(b"prepaid-edge/online-token/v1" + body))


# ---------------------------------------------------------------- from docs/mqtt.md


def sign(command: dict[str, Any], key_id: str, key: Ed25519PrivateKey) -> dict[str, Any]:
    body = {k: v for k, v in command.items() if k != "sig"} | {"key_id": key_id}
    data = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return body | {"sig": b64url(key.sign(data.encode()))}


def relay_command(
    cmd: str, meter: str, now: datetime, *, gateway: str = GW, valid: timedelta = timedelta(hours=3)
) -> dict[str, Any]:
    """``now`` is the gateway's time: under a simulation clock, ahead of ours."""
    expires = now + valid
    return {
        "v": 1,
        "id": f"{cmd}-{uuid.uuid4().hex[:10]}",
        "cmd": cmd,
        "meter": meter,
        "gateway": gateway,
        "reason": "conformance",
        "expires": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


class Broker:
    """Mosquitto with the settings docs/mqtt.md shows (*The broker settings we test with*),
    plus what the page leaves to us: a loopback listener, anonymous clients, a folder for
    its persistence file and its log."""

    host = "127.0.0.1"

    def __init__(self, folder: Path) -> None:
        page = (ROOT / "docs" / "mqtt.md").read_text()
        block = re.search(r"```conf\n(# mosquitto\.conf.*?)```", page, re.DOTALL)
        assert block is not None, "docs/mqtt.md shows no mosquitto.conf block"
        with socket.socket() as s:
            s.bind((self.host, 0))
            self.port: int = s.getsockname()[1]
        self.log_path = folder / "mosquitto.log"
        self.conf = folder / "mosquitto.conf"
        ours = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",  # Mosquitto 2.0 refuses anonymous clients by default
            f"persistence_location {folder}/",
            f"log_dest file {self.log_path}",
        ]
        if os.geteuid() == 0:  # as root it would drop to `mosquitto`, locked out of folder
            ours.append("user root")
        self.conf.write_text(block.group(1) + "\n".join(ours) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen(
            [binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:  # listening: nothing to await but a connection that is accepted
            assert self.proc.poll() is None, f"mosquitto exited: {self.log_path.read_text()}"
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "mosquitto did not listen within 10 s"
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        """SIGTERM, as an operator would; SIGKILL if it lingers."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


class Headend:
    """Subscribes with a persistent session and plain filters on every connect, validates
    every message against its schema, keeps each meter's messages by seq."""

    def __init__(self, broker: Broker) -> None:
        self.validators = {
            p.name.removesuffix(".schema.json"): Draft202012Validator(json.loads(p.read_text()))
            for p in (ROOT / "docs" / "schemas").glob("*.schema.json")
        }
        self.cond = threading.Condition()
        self.meters: dict[str, dict[int, dict[str, Any]]] = {}
        self.statuses: list[dict[str, Any]] = []
        self.online_at: list[float] = []  # time.monotonic() of each `online` status received
        self.results: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self.duplicates = 0
        self.gateway_time = datetime.fromtimestamp(0, UTC)  # the newest ts received
        self.sessions: list[bool] = []  # session_present of each CONNACK
        self.broker = broker
        self.resume()

    def resume(self) -> None:
        """Connect with our persistent session (clean start off, a day's expiry)."""
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=CLIENT_ID, protocol=paho.MQTTv5
        )
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 86_400
        self.client.connect(self.broker.host, self.broker.port, clean_start=False, properties=props)
        self.client.loop_start()

    def pause(self) -> None:
        """Go away, leaving the session for the broker to queue into."""
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: paho.Client, _u: object, flags: Any, _rc: Any, _p: Any) -> None:
        client.subscribe(f"prepaid/v1/{GW}/status", 1)
        client.subscribe(f"prepaid/v1/{GW}/meters/+/+", 1)
        client.subscribe(REPLIES, 1)
        with self.cond:
            self.sessions.append(bool(flags.session_present))
            self.cond.notify_all()

    def _on_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if msg.topic == REPLIES:
            kind = "command-result"
        elif parts[-1] == "status":
            kind = "status"
        elif len(parts) == 6 and parts[-1] in KINDS:
            kind = parts[-1]
        else:
            return  # our own commands
        body = json.loads(msg.payload)
        errors = [e.message for e in self.validators[kind].iter_errors(body)]
        with self.cond:
            if not errors and body.get("ts"):  # the Last Will, written in advance, has none
                ts = datetime.fromisoformat(body["ts"].replace("Z", "+00:00"))
                self.gateway_time = max(self.gateway_time, ts)
            if errors:
                self.violations.append(f"{msg.topic}: {errors}")
            elif kind == "command-result":
                self.results.append(body)
            elif kind == "status":
                self.statuses.append(body)
                if body["state"] == "online":
                    self.online_at.append(time.monotonic())
            elif (body["kind"], body["meter"], body["gateway"]) != (kind, parts[4], GW):
                self.violations.append(f"{msg.topic}: kind, meter or gateway is not the topic's")
            else:
                seen = self.meters.setdefault(body["meter"], {})
                if body["seq"] in seen:
                    self.duplicates += 1
                    if seen[body["seq"]] != body:
                        self.violations.append(f"{msg.topic}: two messages of seq {body['seq']}")
                seen[body["seq"]] = body
            self.cond.notify_all()

    def wait(self, check: Callable[[], Any], within: float, what: str) -> Any:
        """Wait, woken by each message, until ``check()`` is truthy; its value."""
        with self.cond:
            value = self.cond.wait_for(check, timeout=within)
        if not value:
            raise AssertionError(f"no {what} within {within} s")
        return value

    def send(self, meter: str | None, body: dict[str, Any]) -> None:
        topic = f"prepaid/v1/{GW}/meters/{meter}/cmd" if meter else f"prepaid/v1/{GW}/cmd"
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = REPLIES
        props.CorrelationData = body["id"].encode()
        self.client.publish(topic, json.dumps(body), qos=1, properties=props).wait_for_publish(10)

    def _answers(self, request_id: str) -> list[dict[str, Any]]:
        with self.cond:
            return [r for r in self.results if r["id"] == request_id]

    def result(self, request_id: str, earlier: int = 0, within: float = 30) -> dict[str, Any]:
        """The result of ``request_id`` after the ``earlier`` ones (a replay reuses an id)."""
        found = self.wait(
            lambda: self._answers(request_id)[earlier:], within, f"result of {request_id}"
        )
        return found[0]  # type: ignore[no-any-return]

    def request(self, meter: str | None, body: dict[str, Any]) -> dict[str, Any]:
        earlier = len(self._answers(body["id"]))
        self.send(meter, body)
        return self.result(body["id"], earlier)

    def messages(self, meter: str, kind: str | None = None) -> list[dict[str, Any]]:
        with self.cond:
            found = sorted(self.meters.get(meter, {}).items())
        return [m for _, m in found if kind is None or m["kind"] == kind]

    def events(self, meter: str, name: str) -> list[dict[str, Any]]:
        return [m for m in self.messages(meter, "event") if m["event"] == name]

    def latest_balance(self, meter: str) -> dict[str, Any] | None:
        balances = self.messages(meter, "balance")
        return balances[-1] if balances else None

    def missing(self, meter: str) -> list[int]:
        with self.cond:
            seqs = set(self.meters.get(meter, {}))
        return sorted(set(range(1, max(seqs, default=0) + 1)) - seqs)

    def close(self) -> None:
        self.pause()


def wait_published(broker: Broker, meter: str, beyond: int, count: int) -> None:
    """Watch (with a client of its own) until the gateway published ``count`` messages of
    ``meter`` after seq ``beyond``: the broker acknowledged them."""
    got: queue.Queue[bytes] = queue.Queue()
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_message = lambda _c, _u, m: got.put(bytes(m.payload))
    client.on_connect = lambda c, *_: c.subscribe(f"prepaid/v1/{GW}/meters/{meter}/+", 1)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        seen: set[int] = set()
        while len({s for s in seen if s > beyond}) < count:
            seen.add(json.loads(got.get(timeout=30))["seq"])
    finally:
        client.disconnect()
        client.loop_stop()


def retained_view(broker: Broker) -> dict[str, dict[str, Any]]:
    """What a headend connecting now gets as retained: topic -> payload. A retained
    marker of our own, subscribed after the gateway's tree, arrives after all of it."""
    got: queue.Queue[tuple[str, bytes]] = queue.Queue()
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_message = lambda _c, _u, m: got.put((m.topic, bytes(m.payload)))
    marker = f"conformance/{uuid.uuid4().hex}"
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.publish(marker, b"end", qos=1, retain=True).wait_for_publish(10)
        client.subscribe(f"prepaid/v1/{GW}/#", 1)
        client.subscribe(marker, 1)
        view: dict[str, dict[str, Any]] = {}
        while True:
            topic, payload = got.get(timeout=10)
            if topic == marker:
                return view
            view[topic] = json.loads(payload)
    finally:
        client.publish(marker, b"", qos=1, retain=True).wait_for_publish(10)
        client.disconnect()
        client.loop_stop()


# ---------------------------------------------------------------- the site, by console scripts


def cli(*args: object, cwd: Path) -> str:
    ran = subprocess.run(
        [str(BIN / str(args[0])), *map(str, args[1:])],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PREPAID_EDGE_VEND_LEDGER": str(cwd / "vend-counters.json")},
    )
    assert ran.returncode == 0, f"{args}: {ran.stderr}"
    return ran.stdout


class SimulatorControl:
    """The simulator's JSON-lines control port (docs/simulator.md)."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=10)
        self.reader = self.sock.makefile("r")

    def __call__(self, **request: Any) -> Any:
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        reply = json.loads(self.reader.readline())
        assert reply["ok"], reply
        return reply["result"]

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def start_simulator(folder: Path, start: datetime) -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen(
        [str(BIN / "meter-sim"), "serve", "--map", "pe1", "--meters", "3",
         "--tcp", "127.0.0.1:0", "--control", "127.0.0.1:0", "--speed", str(SPEED),
         "--start", start.isoformat(), "--seed", "7"],
        cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    printed: dict[str, str] = {}
    for line in proc.stdout:
        kind, _, rest = line.partition(" ")
        printed[kind] = rest.split(" ")[0]
        if kind == "ready:":
            return proc, printed
    raise AssertionError(f"the simulator ended: {printed}")


def host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def write_config(
    folder: Path, tcp: str, broker: Broker, keys: dict[str, str], start: datetime
) -> Path:
    """The gateway's config as docs/operations.md describes it, around what init wrote."""
    made = tomllib.loads((folder / "gateway.toml").read_text())
    host, port = host_port(tcp)
    text = f"""
gateway_id = "{made["gateway_id"]}"
store = "{made["store"]}"

[[buses]]
name = "tcp-1"
kind = "tcp"
host = "{host}"
port = {port}
timeout_s = 0.5
retries = 0

[mqtt]
brokers = [{{ host = "{broker.host}", port = {broker.port}, tls = false }}]
keepalive_s = 5
reconnect_min_s = 0.1
reconnect_max_s = 1.0

[polling]
interval_s = 0.5
min_interval_s = 0.2
max_interval_s = 1.0
backoff_max_s = 2.0

[tokens]
currency = "{CURRENCY}"
online_public_keys = {{ vend-1 = "{keys["vend-1"]}" }}
headend_public_keys = {{ hq-1 = "{keys["hq-1"]}" }}

[simulation]
clock_speed = {SPEED}
clock_start = "{start.isoformat()}"
clock_anchor = "{start.isoformat()}"
"""
    path = folder / "gateway.toml"
    path.write_text(text)
    return path


@dataclass
class Observed:
    """What the scenario saw, for the tests below to judge."""

    headend: Headend
    sold: dict[str, dict[int, int]] = field(default_factory=dict)  # meter -> counter -> amount
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)  # what -> result
    retained_after_gateway_kill: dict[str, dict[str, Any]] = field(default_factory=dict)
    latest_after_gateway_kill: dict[str, int] = field(default_factory=dict)
    retained_after_broker_kill: dict[str, dict[str, Any]] = field(default_factory=dict)
    current_after_online_s: float = float("inf")  # from `online` to that view
    latest_after_broker_kill: dict[str, int] = field(default_factory=dict)  # gaps filled
    status_json: dict[str, Any] = field(default_factory=dict)
    lwt_seen: bool = False
    resends: int = 0


class Gateway:
    """`meter-gateway run` in a subprocess, its output appended to gateway.log."""

    def __init__(self, folder: Path, config: Path) -> None:
        self.folder, self.config = folder, config
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.folder / "gateway.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "meter-gateway"), "run", "--config", str(self.config)],
                cwd=self.folder, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def stop(self, signum: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(signum)
        return self.proc.wait(timeout=30)


def _rejected(headend: Headend, meter: str, channel: str) -> list[dict[str, Any]]:
    return [
        e for e in headend.events(meter, "token_rejected") if e["details"]["channel"] == channel
    ]


def _sell_keypad(folder: Path, meter: str, amount: str, counter: int) -> str:
    out = cli("meter-provision", "vend", "--vending-key", "vending.key", "--meter", meter,
              "--amount", amount, "--currency", CURRENCY, "--counter", counter, "--force",
              cwd=folder)  # fmt: skip
    return re.sub(r"\D", "", out.strip().splitlines()[-1])


def _retained_matches(
    broker: Broker, headend: Headend
) -> tuple[bool, dict[str, dict[str, Any]], dict[str, int]]:
    view = retained_view(broker)
    latest = {m: b["seq"] for m in OPENING if (b := headend.latest_balance(m)) is not None}
    held = {m: view.get(f"prepaid/v1/{GW}/meters/{m}/balance", {}).get("seq", 0) for m in OPENING}
    status = view.get(f"prepaid/v1/{GW}/status", {})
    return held == latest and status.get("state") == "online", view, latest


def _retained_when_current(
    broker: Broker, headend: Headend, by: float
) -> tuple[dict[str, dict[str, Any]], dict[str, int], float]:
    """The retained view once it holds each meter's latest balance, or the first one taken
    after ``by`` (a ``time.monotonic()``; each look is a fresh subscription: nothing to
    await); with the time its look ended, when the view was what it shows or newer."""
    while True:
        ok, view, latest = _retained_matches(broker, headend)
        looked = time.monotonic()
        if ok or looked > by:
            return view, latest, looked
        time.sleep(0.2)


def _idle(headend: Headend, meter: str, since: int) -> bool:
    """Its register stopped: the last two readings after seq ``since`` draw nothing and
    show the same energy, so its balance does not change again while the load stays 0."""
    readings = [r for r in headend.messages(meter, "reading") if r["seq"] > since]
    return (
        len(readings) >= 2
        and all(r["power_w"] == 0 for r in readings[-2:])
        and (readings[-1]["energy_import_wh"] == readings[-2]["energy_import_wh"])
    )


def _highest(headend: Headend, meter: str) -> int:
    return max((m["seq"] for m in headend.messages(meter)), default=0)


def _wait_resent(headend: Headend, meter: str, seq: int) -> None:
    headend.wait(lambda: seq not in headend.missing(meter), 30, f"{meter} seq {seq} resent")


def _fill_gaps_of(headend: Headend, meter: str) -> int:
    """Make the meter speak (``reread``: a new reading shows a lost tail), then ask for
    each gap with ``resend`` until none is left; how many resends it took."""
    before = _highest(headend, meter)
    reread = {"v": 1, "id": f"rr-{uuid.uuid4().hex[:8]}", "cmd": "reread", "meter": meter}
    answer = headend.request(meter, reread)
    assert answer["ok"], answer
    headend.wait(lambda: _highest(headend, meter) > before, 30, f"{meter} read again")
    resends = 0
    while gaps := headend.missing(meter):
        resend = {"v": 1, "id": f"rs-{uuid.uuid4().hex[:8]}", "cmd": "resend",
                  "meter": meter, "from_seq": gaps[0]}  # fmt: skip
        answer = headend.request(meter, resend)
        assert answer["ok"], answer
        resends += 1
        _wait_resent(headend, meter, gaps[0])
    return resends


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    folder = tmp_path_factory.mktemp("conformance")
    broker_dir = folder / "broker"
    broker_dir.mkdir()
    broker = Broker(broker_dir)
    broker.start()
    start = datetime.now(UTC)
    sim, printed = start_simulator(folder, start)
    control = SimulatorControl(host_port(printed["control"]))
    headend: Headend | None = None
    gateway: Gateway | None = None
    try:
        for unit, meter in enumerate(OPENING, 1):
            control(cmd="load", unit=unit, watts=LOADS_W[meter])
        # docs/field-guide.md: init, keys, enrol.
        site = folder / "site"
        cli("meter-provision", "init", "--dir", site, "--gateway-id", GW,
            "--self-signed-days", "30", cwd=folder)  # fmt: skip
        cli("meter-provision", "keys", "new-vending-key", "--out", "vending.key", cwd=folder)
        keys: dict[str, str] = {}
        signing: dict[str, Ed25519PrivateKey] = {}
        for key_id in ("vend-1", "hq-1"):
            out = cli("meter-provision", "keys", "new-signing-key", "--out", f"{key_id}.key",
                      "--key-id", key_id, cwd=folder)  # fmt: skip
            keys[key_id] = re.findall(rf"{key_id} = (\S+)", out)[0]
            signing[key_id] = Ed25519PrivateKey.from_private_bytes(
                bytes.fromhex((folder / f"{key_id}.key").read_text())
            )
        config = write_config(site, printed["modbus-tcp"], broker, keys, start)
        for unit, meter in enumerate(OPENING, 1):
            cli("meter-provision", "keys", "meter-key", "--vending-key", "vending.key",
                "--meter", meter, "--out", f"{meter}.key", cwd=folder)  # fmt: skip
            cli("meter-provision", "enrol", "--config", config, "--meter", meter,
                "--bus", "tcp-1", "--unit", unit, "--key-file", f"{meter}.key",
                "--price-per-kwh", "1", "--currency", CURRENCY,
                "--credit", f"{OPENING[meter] // 100}.{OPENING[meter] % 100:02d}", "--alarm1", "1",
                "--alarm2", "0.50", "--overdraft-limit", "0", "--reconnect-threshold",
                "0.50", "--max-balance", "1000", cwd=folder)  # fmt: skip
        headend = Headend(broker)
        headend.wait(lambda: headend.sessions, 10, "connection")
        gateway = Gateway(site, config)
        gateway.start()
        observed = Observed(headend)
        headend.wait(lambda: headend.statuses and headend.statuses[-1]["state"] == "online",
                     20, "gateway online")  # fmt: skip

        # Cut-off, then a keypad top-up brings meter 1 back.
        headend.wait(lambda: headend.events(M1, "relay_opened"), 60, "cut-off of meter 1")
        assert control(cmd="state", unit=1)["relay_closed"] is False
        observed.sold[M1] = {1: 500}
        control(cmd="keypad", unit=1, digits=_sell_keypad(folder, M1, "5.00", 1))
        headend.wait(lambda: headend.events(M1, "relay_closed"), 30, "reconnect of meter 1")
        control(cmd="load", unit=1, watts=0)

        # An online top-up of meter 2, its replay, and its keypad twin.
        token = online_token(signing["vend-1"], "vend-1", M2, 1, 1000)
        observed.sold[M2] = {1: 1000}
        topup = {"v": 1, "id": "topup-1", "cmd": "topup", "token": token}
        observed.answers["topup"] = headend.request(M2, topup)
        observed.answers["topup replayed"] = headend.request(M2, topup | {"id": "topup-2"})
        control(cmd="keypad", unit=2, digits=_sell_keypad(folder, M2, "10.00", 1))
        headend.wait(lambda: _rejected(headend, M2, "keypad"), 30, "keypad twin refused")

        # Signed commands on meter 3, and what the gateway refuses.
        hq = signing["hq-1"]
        now = headend.gateway_time
        cut = sign(relay_command("disconnect", M3, now), "hq-1", hq)
        observed.answers["disconnect"] = headend.request(M3, cut)
        headend.wait(lambda: headend.events(M3, "relay_opened"), 30, "remote disconnect")
        observed.answers["disconnect replayed"] = headend.request(M3, cut)
        other = sign(relay_command("reconnect", M3, now, gateway="gw-other"), "hq-1", hq)
        observed.answers["wrong gateway"] = headend.request(M3, other)
        forged = sign(relay_command("reconnect", M3, now), "hq-1", Ed25519PrivateKey.generate())
        observed.answers["bad signature"] = headend.request(M3, forged)
        stranger = sign(relay_command("reconnect", M3, now), "hq-9", hq)
        observed.answers["unknown key"] = headend.request(M3, stranger)
        stale = sign(relay_command("reconnect", M3, now, valid=-timedelta(hours=1)), "hq-1", hq)
        observed.answers["expired"] = headend.request(M3, stale)
        back = sign(relay_command("reconnect", M3, headend.gateway_time), "hq-1", hq)
        observed.answers["reconnect"] = headend.request(M3, back)
        headend.wait(lambda: headend.events(M3, "relay_closed"), 30, "remote reconnect")

        # A gateway SIGKILL: the Last Will, a command queued meanwhile, then back.
        assert gateway.stop(9) == -9
        queued = {"v": 1, "id": "rr-queued", "cmd": "reread", "meter": M3}
        headend.send(M3, queued)
        headend.wait(lambda: headend.statuses[-1]["state"] == "offline", 30, "the Last Will")
        observed.lwt_seen = True
        gateway.start()
        observed.answers["queued while down"] = headend.result("rr-queued")
        headend.wait(lambda: headend.statuses[-1]["state"] == "online", 30, "gateway back")
        (
            observed.retained_after_gateway_kill,
            observed.latest_after_gateway_kill,
            _,
        ) = _retained_when_current(broker, headend, time.monotonic() + REBIRTH_WITHIN_S)

        # Every meter idle before the broker dies (meter 2 stops here; 1 and 3 already
        # draw nothing), so no balance changes after it: only a rebirth can put the
        # retained balances right, and the headend already holds what they must be.
        control(cmd="load", unit=2, watts=0)
        since = _highest(headend, M2)
        headend.wait(lambda: _idle(headend, M2, since), 30, "meter 2 idle")

        # A broker SIGKILL while the headend is away: its autosave never ran, so it comes
        # back empty, and what it had queued for the headend is lost (a seq gap).
        sessions, onlines = len(headend.sessions), len(headend.online_at)
        highest = max(m["seq"] for m in headend.messages(M2))
        headend.pause()
        wait_published(broker, M2, highest, 5)
        broker.kill()
        broker.start()
        headend.resume()
        headend.wait(lambda: len(headend.sessions) > sessions, 30, "headend reconnected")
        headend.wait(lambda: len(headend.online_at) > onlines, 30, "gateway online again")
        # Timed from `online` as the headend received it: live, as it resubscribed the
        # moment the broker was back and the gateway waits out its reconnect backoff (or
        # retained, a few ms after it reached the broker, if the gateway came back first).
        online = headend.online_at[onlines]
        view, _, looked = _retained_when_current(broker, headend, online + REBIRTH_WITHIN_S)
        observed.retained_after_broker_kill = view
        observed.current_after_online_s = looked - online
        observed.resends = sum(_fill_gaps_of(headend, meter) for meter in OPENING)
        observed.latest_after_broker_kill = {
            m: b["seq"] for m in OPENING if (b := headend.latest_balance(m)) is not None
        }
        status = subprocess.run(
            [str(BIN / "meter-gateway"), "status", "--json", "--config", str(config)],
            capture_output=True, text=True, check=False, timeout=30,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        observed.status_json = json.loads(status.stdout)
        yield observed
    except BaseException:
        for log in (folder / "site" / "gateway.log", broker.log_path):
            if log.exists():
                print(f"--- the end of {log.name} ---\n{log.read_text()[-4000:]}")
        raise
    finally:
        if gateway is not None and gateway.proc is not None and gateway.proc.poll() is None:
            gateway.stop(15)
        if headend is not None:
            headend.close()
        control.close()
        sim.terminate()
        sim.communicate(timeout=30)
        broker.stop()


# ---------------------------------------------------------------- what the docs promise


def test_this_headend_imports_only_the_standard_library_and_public_packages() -> None:
    """What it knows of us comes from the docs, the schema files and the console scripts."""
    imported = set()
    for node in ast.walk(ast.parse(Path(__file__).read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "a relative import ties this headend to our tree"
            imported.add((node.module or "").split(".")[0])
    outside = imported - set(sys.stdlib_module_names) - {"__future__"}
    assert outside == {"paho", "pytest", "cryptography", "jsonschema"}


def test_every_message_and_result_matches_its_schema(observed: Observed) -> None:
    assert observed.headend.violations == []
    assert all(observed.headend.messages(m) for m in OPENING)


def test_seq_is_gap_free_after_resends(observed: Observed) -> None:
    assert observed.resends > 0, "the broker SIGKILL should have cost the headend messages"
    assert observed.headend.sessions[-1] is False, "the broker should have lost our session"
    for meter in OPENING:
        seqs = [m["seq"] for m in observed.headend.messages(meter)]
        assert seqs == list(range(1, len(seqs) + 1)), meter


def test_money_adds_up_to_the_minor_unit_at_every_balance(observed: Observed) -> None:
    """Each balance = opening credit + what we sold and the gateway accepted before it
    - what the readings before it charged."""
    for meter, opening in OPENING.items():
        credit, charged, checked = opening, 0, 0
        for message in observed.headend.messages(meter):
            if message["kind"] == "reading":
                charged += message["charged"]
            elif message["kind"] == "event" and message["event"] == "token_accepted":
                credit += observed.sold[meter][message["details"]["counter"]]
            elif message["kind"] == "balance":
                assert message["balance"] == credit - charged, (meter, message["seq"])
                assert message["currency"] == CURRENCY
                checked += 1
        assert checked > 0, meter


def test_cutoff_top_ups_and_replays_answer_as_documented(observed: Observed) -> None:
    h = observed.headend
    cut = h.events(M1, "relay_opened")[0]
    assert cut["reason"] == "credit_exhausted"
    assert cut["details"]["decision"]["rule"] == "credit_exhausted"
    keypad = h.events(M1, "token_accepted")[0]["details"]
    assert (keypad["channel"], keypad["counter"]) == ("keypad", 1)
    topup = observed.answers["topup"]
    assert topup["ok"] is True, topup
    assert topup["gateway"] == GW
    replay = observed.answers["topup replayed"]
    assert (replay["ok"], replay["error"]) == (False, "replayed")
    assert [e["reason"] for e in _rejected(h, M2, "online")] == ["replayed"]
    assert [e["reason"] for e in _rejected(h, M2, "keypad")] == ["replayed"]


def test_signed_commands_answer_as_documented(observed: Observed) -> None:
    errors = {what: (r["ok"], r["error"]) for what, r in observed.answers.items()}
    assert errors["disconnect"] == (True, None)
    assert errors["reconnect"] == (True, None)
    assert errors["disconnect replayed"] == (False, "replayed_command")
    assert errors["wrong gateway"] == (False, "wrong_gateway")
    assert errors["bad signature"] == (False, "bad_signature")
    assert errors["unknown key"] == (False, "unknown_key")
    assert errors["expired"] == (False, "expired")
    assert errors["queued while down"] == (True, None)
    balance = next(b for b in observed.headend.messages(M3, "balance") if b["relay"] == "open")
    assert balance["credit_state"] == "remote_disconnected"


def test_last_will_and_status_age(observed: Observed) -> None:
    assert observed.lwt_seen
    assert 0 <= observed.status_json["age_s"] < 30
    assert observed.status_json["broker"] == "connected"


def test_retained_view_is_current_after_a_gateway_kill(observed: Observed) -> None:
    view = observed.retained_after_gateway_kill
    assert view[f"prepaid/v1/{GW}/status"]["state"] == "online"
    for meter, seq in observed.latest_after_gateway_kill.items():
        assert view[f"prepaid/v1/{GW}/meters/{meter}/balance"]["seq"] == seq, meter


def test_retained_view_is_current_within_the_stated_time_after_a_broker_kill(
    observed: Observed,
) -> None:
    """docs/mqtt.md: once the gateway's `online` is on the broker, every retained balance
    is the meter's latest within 5 s plus 1 s per 1,000 meters (:data:`REBIRTH_WITHIN_S` here). The
    broker came back empty and no balance changed after the kill, so only the gateway's
    rebirth can have put them there; the latest are known once the seq gaps are filled."""
    assert observed.current_after_online_s <= REBIRTH_WITHIN_S
    view = observed.retained_after_broker_kill
    assert view.get(f"prepaid/v1/{GW}/status", {}).get("state") == "online"
    held = {
        m: view.get(f"prepaid/v1/{GW}/meters/{m}/balance", {}).get("seq")
        for m in observed.latest_after_broker_kill
    }
    assert held == observed.latest_after_broker_kill
