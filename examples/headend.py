"""A reference headend for prepaid-edge gateways, written from the published contract only
(docs/mqtt.md, docs/tokens.md and the JSON Schemas in docs/schemas/), as an integrator
would. It imports nothing of prepaid-edge: copy this file and the schema files anywhere;
it needs paho-mqtt 2, cryptography and jsonschema.

It keeps a persistent MQTT 5 session with a plain subscription (the broker queues what
arrives while it is away; docs/mqtt.md, *Subscribing*), validates every message against
its JSON Schema, tracks each meter's sequence numbers to detect gaps and duplicates,
asks the gateway to resend a gap, stores readings in SQLite and prints a per-gateway
summary. It signs online top-up tokens (docs/tokens.md section 4) and remote commands
(docs/mqtt.md, *Signed commands*) itself.

    python headend.py --broker 127.0.0.1:1883 --db headend.db --duration 60
    python headend.py --broker 127.0.0.1:1883 --topup gw-001/PE1-000042 \\
        --amount 50000 --currency KES --counter 18 --signing-key vend.key --key-id vend-2026
    python headend.py --broker 127.0.0.1:1883 --command disconnect gw-001/PE1-000042 \\
        --reason "customer moved out" --command-key hq.key --command-key-id hq-2026
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import queue
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jsonschema import Draft202012Validator
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

#: The schema files: docs/schemas/ in the repository; beside this file once copied out.
SCHEMA_DIR = next(
    (
        folder
        for folder in (
            Path(__file__).resolve().parents[1] / "docs" / "schemas",
            Path(__file__).resolve().parent / "schemas",
        )
        if folder.is_dir()
    ),
    Path("schemas"),
)
METER_KINDS = ("reading", "balance", "event")
#: Commands that switch supply must be signed (docs/mqtt.md, Commands).
SIGNED_COMMANDS = ("disconnect", "reconnect", "protect_on", "protect_off")
#: How long a signed command stays valid (the gateway refuses more than 24 h).
COMMAND_LIFETIME = timedelta(minutes=5)


# ---------------------------------------------------------------- docs/tokens.md, section 4


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 4648 section 5), as tokens and signatures travel."""
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _short_ascii(text: str, what: str) -> bytes:
    raw = text.encode("ascii")
    if not 1 <= len(raw) <= 32:
        raise ValueError(f"{what} must be 1 to 32 ASCII characters")
    return bytes([len(raw)]) + raw


def online_token(
    signing_key: Ed25519PrivateKey,
    key_id: str,
    meter: str,
    *,
    counter: int,
    amount: int,
    currency: str,
    txn_id: bytes,
    issued_at: datetime,
    expires_at: datetime,
    epoch: int = 0,
    class_code: int = 0,
) -> str:
    """An online token (docs/tokens.md 4.1): the body, then the Ed25519 signature of
    ``"prepaid-edge/online-token/v1" || body``, as base64url. Class 0 is credit, in minor
    units of ``currency``."""
    if len(txn_id) != 16 or len(currency) != 3:
        raise ValueError("a transaction id is 16 bytes and a currency 3 letters")
    body = (
        bytes([1])
        + _short_ascii(key_id, "key id")
        + _short_ascii(meter, "meter id")
        + epoch.to_bytes(2, "big")
        + counter.to_bytes(2, "big")
        + bytes([class_code])
        + amount.to_bytes(4, "big")
        + currency.encode("ascii")
        + txn_id
        + int(issued_at.timestamp()).to_bytes(8, "big")
        + int(expires_at.timestamp()).to_bytes(8, "big")
    )
    return b64url(body + signing_key.sign(b"prepaid-edge/online-token/v1" + body))


# ---------------------------------------------------------------- docs/mqtt.md, Signed commands


def signing_bytes(command: dict[str, Any]) -> bytes:
    """What a headend signs: the command's JSON without ``sig``, keys sorted, compact, UTF-8."""
    body = {k: v for k, v in command.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign_command(command: dict[str, Any], key_id: str, key: Ed25519PrivateKey) -> dict[str, Any]:
    """A copy of ``command`` with ``key_id`` and its base64url Ed25519 ``sig``."""
    body = {k: v for k, v in command.items() if k != "sig"} | {"key_id": key_id}
    return body | {"sig": b64url(key.sign(signing_bytes(body)))}


def signed_command(
    cmd: str,
    gateway: str,
    meter: str,
    *,
    key_id: str,
    key: Ed25519PrivateKey,
    reason: str = "remote",
    request_id: str | None = None,
    now: datetime | None = None,
    lifetime: timedelta = COMMAND_LIFETIME,
) -> dict[str, Any]:
    """A signed relay command (``disconnect``, ``reconnect``, ``protect_on``,
    ``protect_off``) for one meter of one gateway, valid for ``lifetime``."""
    expires = (now or datetime.now(UTC)) + lifetime
    body = {
        "v": 1,
        "id": request_id or f"{cmd}-{uuid.uuid4().hex[:12]}",
        "cmd": cmd,
        "meter": meter,
        "gateway": gateway,
        "reason": reason,
        "expires": expires.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return sign_command(body, key_id, key)


def read_key_file(path: Path) -> Ed25519PrivateKey:
    """A key file of ``meter-provision keys new-signing-key``: the 32-byte Ed25519 private
    key as 64 hex digits and a newline (docs/mqtt.md, *Your signing keys*)."""
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(path.read_text().strip()))


# ---------------------------------------------------------------- receiving


def load_validators(folder: Path = SCHEMA_DIR) -> dict[str, Draft202012Validator]:
    """One validator per payload kind, from the published schema files."""
    out = {}
    for path in sorted(folder.glob("*.schema.json")):
        schema = json.loads(path.read_text())
        Draft202012Validator.check_schema(schema)
        out[path.name.removesuffix(".schema.json")] = Draft202012Validator(schema)
    if not out:
        raise FileNotFoundError(f"no *.schema.json in {folder}")
    return out


@dataclass
class MeterSequence:
    """What we know of one meter's message sequence."""

    highest: int = 0
    missing: set[int] = field(default_factory=set)
    duplicates: int = 0


@dataclass
class GatewaySummary:
    messages: int = 0
    readings: int = 0
    violations: int = 0
    gaps_seen: int = 0
    duplicates: int = 0
    online: bool | None = None
    meters: dict[str, MeterSequence] = field(default_factory=dict)

    @property
    def missing(self) -> int:
        return sum(len(m.missing) for m in self.meters.values())


class Headend:
    """The message-handling half of the headend: validation, sequences, storage."""

    def __init__(self, db: Path | str = ":memory:", schema_dir: Path = SCHEMA_DIR) -> None:
        self.validators = load_validators(schema_dir)
        self.db = sqlite3.connect(str(db), check_same_thread=False)
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS readings (
                gateway TEXT, meter TEXT, seq INTEGER, ts TEXT, energy_import_wh INTEGER,
                power_w INTEGER, PRIMARY KEY (gateway, meter, seq));
            CREATE TABLE IF NOT EXISTS sequences (
                gateway TEXT, meter TEXT, highest INTEGER, PRIMARY KEY (gateway, meter));
            """
        )
        self.gateways: dict[str, GatewaySummary] = {}
        self.violation_log: list[str] = []
        self.gap_requests: list[tuple[str, str, int]] = []
        self.balances: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.results: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def _violation(self, gw: GatewaySummary, topic: str, problem: str) -> None:
        gw.violations += 1
        self.violation_log.append(f"{topic}: {problem}")

    def handle(self, topic: str, payload: bytes) -> None:
        """Take one message from the broker."""
        with self.lock:
            self._handle(topic, payload)

    def _handle(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        if len(parts) < 4 or parts[:2] != ["prepaid", "v1"]:
            return
        gw = self.gateways.setdefault(parts[2], GatewaySummary())
        gw.messages += 1
        try:
            message = json.loads(payload)
        except ValueError:
            self._violation(gw, topic, "not JSON")
            return
        if parts[3] == "status" and len(parts) == 4:
            kind = "status"
        elif len(parts) == 6 and parts[3] == "meters" and parts[5] in METER_KINDS:
            kind = parts[5]
        elif parts[-1] == "result" or parts[-2:] == ["cmd", "result"]:
            kind = "command-result"
        else:
            return  # commands and other traffic are not ours to check
        errors = sorted(e.message for e in self.validators[kind].iter_errors(message))
        if errors:
            self._violation(gw, topic, "; ".join(errors))
            return
        if kind == "status":
            gw.online = message["state"] == "online"
            return
        if kind == "command-result":
            self.results.append(message)
            return
        if (
            message.get("kind") != kind
            or message["gateway"] != parts[2]
            or message["meter"] != parts[4]
        ):
            self._violation(gw, topic, "kind, gateway or meter does not match the topic")
            return
        self._sequence(parts[2], parts[4], message["seq"])
        if kind == "reading":
            gw.readings += 1
            self.db.execute(
                "INSERT OR IGNORE INTO readings VALUES (?,?,?,?,?,?)",
                (
                    parts[2],
                    parts[4],
                    message["seq"],
                    message["ts"],
                    message["energy_import_wh"],
                    message.get("power_w"),
                ),
            )
        elif kind == "balance":
            self.balances[(parts[2], parts[4])] = message
        else:
            self.events.append(message)

    def _sequence(self, gateway: str, meter: str, seq: int) -> None:
        gw = self.gateways[gateway]
        state = gw.meters.get(meter)
        if state is None:
            row = self.db.execute(
                "SELECT highest FROM sequences WHERE gateway=? AND meter=?", (gateway, meter)
            ).fetchone()
            # A meter we never saw: its first message starts our view of it, unless it
            # is seq 1, in which case nothing before it exists.
            state = MeterSequence(highest=row[0] if row else seq - 1)
            gw.meters[meter] = state
        if seq <= state.highest:
            if seq in state.missing:
                state.missing.discard(seq)
            else:
                state.duplicates += 1
                gw.duplicates += 1
            return
        if seq > state.highest + 1:
            gw.gaps_seen += 1
            state.missing.update(range(state.highest + 1, seq))
            self.gap_requests.append((gateway, meter, state.highest + 1))
        state.highest = seq
        self.db.execute("INSERT OR REPLACE INTO sequences VALUES (?,?,?)", (gateway, meter, seq))

    def summary_lines(self) -> Iterator[str]:
        for name, gw in sorted(self.gateways.items()):
            yield (
                f"gateway {name}: {'online' if gw.online else 'offline' if gw.online is False else '?'}"
                f", {gw.messages} messages, {len(gw.meters)} meters, {gw.readings} readings, "
                f"{gw.violations} schema violations, {gw.gaps_seen} gaps seen, "
                f"{gw.missing} still missing, {gw.duplicates} duplicates"
            )


# ---------------------------------------------------------------- the MQTT client


class HeadendClient:
    """The MQTT half: subscriptions, resend requests, commands with a response topic.

    ``session_expiry_s`` > 0 keeps a persistent session under a stable ``client_id``, so
    the broker queues what arrives while the headend is away. ``share_group`` subscribes
    through an MQTT 5 shared subscription instead; read docs/mqtt.md, *Subscribing*, for
    what Mosquitto then does with an instance that is away.
    """

    def __init__(
        self,
        headend: Headend,
        host: str,
        port: int,
        client_id: str | None = None,
        *,
        session_expiry_s: int = 0,
        share_group: str | None = None,
    ) -> None:
        self.headend = headend
        self.client_id = client_id or f"headend-{uuid.uuid4().hex[:8]}"
        self.reply_topic = f"headend/{self.client_id}/replies"
        self.replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self.session_expiry_s = session_expiry_s
        self.share_group = share_group
        self._connected = threading.Event()
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5
        )
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._host, self._port = host, port

    def _filter(self, topic_filter: str) -> str:
        return f"$share/{self.share_group}/{topic_filter}" if self.share_group else topic_filter

    def _on_connect(self, client: paho.Client, _u: object, _f: object, rc: Any, _p: Any) -> None:
        # Subscribe on every connect, even to a session the broker kept: Mosquitto does
        # not restore shared subscriptions after a restart (docs/mqtt.md, Subscribing).
        client.subscribe(self._filter("prepaid/v1/+/status"), 1)
        client.subscribe(self._filter("prepaid/v1/+/meters/+/+"), 1)
        client.subscribe(self.reply_topic, 1)
        self._connected.set()

    def _on_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        if msg.topic == self.reply_topic:
            self.replies.put(json.loads(msg.payload))
            return
        if msg.topic.endswith("/cmd"):
            return
        self.headend.handle(msg.topic, bytes(msg.payload))

    def start(self, timeout: float = 10.0) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.session_expiry_s
        self._client.connect(
            self._host, self._port, clean_start=self.session_expiry_s == 0, properties=props
        )
        self._client.loop_start()
        if not self._connected.wait(timeout):
            raise TimeoutError("headend could not connect")

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def command(self, gateway: str, meter: str | None, body: dict[str, Any]) -> None:
        """Send a command with an MQTT 5 response topic and correlation data."""
        topic = (
            f"prepaid/v1/{gateway}/cmd"
            if meter is None
            else f"prepaid/v1/{gateway}/meters/{meter}/cmd"
        )
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = str(body.get("id", "")).encode()
        self._client.publish(topic, json.dumps(body), qos=1, properties=props).wait_for_publish(5)

    def request(
        self, gateway: str, meter: str | None, body: dict[str, Any], timeout: float = 15.0
    ) -> dict[str, Any]:
        """Send a command and wait for its result (on our MQTT 5 response topic)."""
        self.command(gateway, meter, body)
        deadline = time.monotonic() + timeout
        while True:
            reply = self.replies.get(timeout=max(0.01, deadline - time.monotonic()))
            if reply.get("id") == body["id"]:
                return reply

    def vend_online(
        self,
        gateway: str,
        meter: str,
        *,
        signing_key: Ed25519PrivateKey,
        key_id: str,
        counter: int,
        amount: int,
        currency: str,
        timeout: float = 15.0,
    ) -> dict[str, Any]:
        """Sell an online top-up end to end: sign the token, send the ``topup`` command,
        and wait for the gateway's result."""
        now = datetime.now(UTC)
        token = online_token(
            signing_key,
            key_id,
            meter,
            counter=counter,
            amount=amount,
            currency=currency,
            txn_id=os.urandom(16),
            issued_at=now,
            expires_at=now + timedelta(days=7),
        )
        request_id = f"topup-{uuid.uuid4().hex[:12]}"
        body = {"v": 1, "id": request_id, "cmd": "topup", "token": token}
        return self.request(gateway, meter, body, timeout)

    def send_signed(
        self,
        cmd: str,
        gateway: str,
        meter: str,
        *,
        key: Ed25519PrivateKey,
        key_id: str,
        reason: str = "remote",
        timeout: float = 15.0,
    ) -> dict[str, Any]:
        """Send a signed relay command and wait for its result."""
        body = signed_command(cmd, gateway, meter, key_id=key_id, key=key, reason=reason)
        return self.request(gateway, meter, body, timeout)

    def request_resends(self) -> int:
        """Ask for every gap seen so far; returns how many requests went out."""
        with self.headend.lock:
            pending, self.headend.gap_requests = self.headend.gap_requests, []
        for gateway, meter, from_seq in pending:
            self.command(
                gateway,
                meter,
                {
                    "v": 1,
                    "id": f"resend-{uuid.uuid4().hex[:8]}",
                    "cmd": "resend",
                    "meter": meter,
                    "from_seq": from_seq,
                },
            )
        return len(pending)


# ---------------------------------------------------------------- command line


def _target(parser: argparse.ArgumentParser, text: str) -> tuple[str, str]:
    gateway, _, meter = text.partition("/")
    if not gateway or not meter:
        parser.error(f"{text!r}: give GATEWAY/METER, e.g. gw-001/PE1-000042")
    return gateway, meter


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headend.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--broker", default="127.0.0.1:1883", help="HOST:PORT")
    parser.add_argument("--db", default="headend.db", help="SQLite file for readings")
    parser.add_argument("--schemas", type=Path, default=SCHEMA_DIR, help="the schema files")
    parser.add_argument(
        "--client-id", default="headend-1", help="stable, so the broker keeps our session"
    )
    parser.add_argument(
        "--session-expiry",
        type=int,
        default=86_400,
        help="seconds the broker keeps our session while we are away (0: none)",
    )
    parser.add_argument(
        "--share", metavar="GROUP", help="subscribe through $share/GROUP/ (see docs/mqtt.md)"
    )
    parser.add_argument(
        "--duration", type=float, default=0, help="seconds to run (0 = until Ctrl-C)"
    )
    vend = parser.add_argument_group("sell an online top-up first")
    vend.add_argument("--topup", metavar="GATEWAY/METER", help="e.g. gw-001/PE1-000042")
    vend.add_argument("--amount", type=int, help="minor units, e.g. 50000 for 500.00")
    vend.add_argument("--currency", default="USD")
    vend.add_argument("--counter", type=int, help="the meter's next purchase counter")
    vend.add_argument(
        "--signing-key", type=Path, help="the vending service's key file (hex Ed25519)"
    )
    vend.add_argument("--key-id", help="the id the gateways know its public key by")
    signed = parser.add_argument_group("send a signed command first")
    signed.add_argument(
        "--command", nargs=2, metavar=("CMD", "GATEWAY/METER"), help=", ".join(SIGNED_COMMANDS)
    )
    signed.add_argument("--reason", default="remote", help="said in the meter's events")
    signed.add_argument("--command-key", type=Path, help="the headend's key file (hex Ed25519)")
    signed.add_argument("--command-key-id", help="the id the gateways know its public key by")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    host, _, port = args.broker.rpartition(":")
    if args.topup and None in (args.amount, args.counter, args.signing_key, args.key_id):
        parser.error("--topup needs --amount, --counter, --signing-key and --key-id")
    if args.command and (
        args.command[0] not in SIGNED_COMMANDS or None in (args.command_key, args.command_key_id)
    ):
        parser.error(
            f"--command takes one of {', '.join(SIGNED_COMMANDS)} and needs "
            "--command-key and --command-key-id"
        )
    headend = Headend(args.db, args.schemas)
    client = HeadendClient(
        headend,
        host,
        int(port),
        args.client_id,
        session_expiry_s=args.session_expiry,
        share_group=args.share,
    )
    client.start()
    failed = False
    try:
        if args.topup:
            gateway, meter = _target(parser, args.topup)
            result = client.vend_online(
                gateway,
                meter,
                signing_key=read_key_file(args.signing_key),
                key_id=args.key_id,
                counter=args.counter,
                amount=args.amount,
                currency=args.currency,
            )
            failed |= not result["ok"]
            verdict = "credited" if result["ok"] else f"refused ({result['error']})"
            print(f"top-up {verdict}: {json.dumps(result)}", flush=True)
        if args.command:
            gateway, meter = _target(parser, args.command[1])
            result = client.send_signed(
                args.command[0],
                gateway,
                meter,
                key=read_key_file(args.command_key),
                key_id=args.command_key_id,
                reason=args.reason,
            )
            failed |= not result["ok"]
            verdict = "done" if result["ok"] else f"refused ({result['error']})"
            print(f"{args.command[0]} {verdict}: {json.dumps(result)}", flush=True)
        deadline = time.monotonic() + args.duration if args.duration else None
        while deadline is None or time.monotonic() < deadline:
            time.sleep(min(1.0, args.duration or 1.0))
            if client.request_resends():
                print("gap seen: resend requested", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        client.stop()
        with headend.lock:
            headend.db.commit()
    for line in headend.summary_lines():
        print(line)
    for problem in headend.violation_log[:20]:
        print("violation:", problem)
    return 1 if failed or any(gw.violations for gw in headend.gateways.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
