"""A reference headend subscriber for prepaid-edge gateways, written against the published
contract only (the topic tree and the JSON Schemas in docs/schemas), as an integrator would.

It subscribes with an MQTT 5 shared subscription (so several headend instances split
the load), validates every message against its JSON Schema, tracks each meter's
sequence numbers to detect gaps and duplicates, asks the gateway to resend a gap,
stores readings in SQLite and prints a per-gateway summary.

    python examples/headend.py --broker 127.0.0.1:1883 --db headend.db --duration 60
    python examples/headend.py --broker 127.0.0.1:1883 --topup gw-001/PE1-000042 \
        --amount 50000 --currency KES --counter 18 --signing-key vend.key --key-id vend-2026
"""

from __future__ import annotations

import argparse
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

from protocol.tokens.online import issue_online
from protocol.tokens.token_class import TokenClass

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "docs" / "schemas"
SHARE_GROUP = "headend"
METER_KINDS = ("reading", "balance", "event")


def load_validators(folder: Path = SCHEMA_DIR) -> dict[str, Draft202012Validator]:
    """One validator per payload kind, from the published schema files."""
    out = {}
    for path in sorted(folder.glob("*.schema.json")):
        schema = json.loads(path.read_text())
        Draft202012Validator.check_schema(schema)
        out[path.name.removesuffix(".schema.json")] = Draft202012Validator(schema)
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

    def __init__(self, db: Path | str = ":memory:") -> None:
        self.validators = load_validators()
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


class HeadendClient:
    """The MQTT half: shared subscription, resend requests, commands with response topic."""

    def __init__(
        self, headend: Headend, host: str, port: int, client_id: str | None = None
    ) -> None:
        self.headend = headend
        self.client_id = client_id or f"headend-{uuid.uuid4().hex[:8]}"
        self.reply_topic = f"headend/{self.client_id}/replies"
        self.replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self._connected = threading.Event()
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5
        )
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._host, self._port = host, port

    def _on_connect(self, client: paho.Client, _u: object, _f: object, rc: Any, _p: Any) -> None:
        client.subscribe(f"$share/{SHARE_GROUP}/prepaid/v1/+/status", 1)
        client.subscribe(f"$share/{SHARE_GROUP}/prepaid/v1/+/meters/+/+", 1)
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
        self._client.connect(self._host, self._port)
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
        and wait for the gateway's result (on our MQTT 5 response topic)."""
        now = datetime.now(UTC)
        token = issue_online(
            signing_key,
            key_id,
            meter,
            counter,
            TokenClass.CREDIT,
            amount,
            currency,
            os.urandom(16),
            now,
            now + timedelta(days=7),
        )
        request_id = f"topup-{uuid.uuid4().hex[:12]}"
        self.command(gateway, meter, {"v": 1, "id": request_id, "cmd": "topup", "token": token})
        deadline = time.monotonic() + timeout
        while True:
            reply = self.replies.get(timeout=max(0.01, deadline - time.monotonic()))
            if reply.get("id") == request_id:
                return reply

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--broker", default="127.0.0.1:1883", help="HOST:PORT")
    parser.add_argument("--db", default="headend.db", help="SQLite file for readings")
    parser.add_argument(
        "--duration", type=float, default=0, help="seconds to run (0 = until Ctrl-C)"
    )
    vend = parser.add_argument_group("sell an online top-up first")
    vend.add_argument("--topup", metavar="GATEWAY/METER", help="e.g. gw-001/PE1-000042")
    vend.add_argument("--amount", type=int, help="minor units, e.g. 50000 for 500.00")
    vend.add_argument("--currency", default="USD")
    vend.add_argument("--counter", type=int, help="the meter's next purchase counter")
    vend.add_argument(
        "--signing-key",
        type=Path,
        help="hex Ed25519 key file (meter-provision keys new-signing-key)",
    )
    vend.add_argument("--key-id", help="the id the gateways know its public key by")
    args = parser.parse_args(argv)
    host, _, port = args.broker.rpartition(":")
    headend = Headend(args.db)
    client = HeadendClient(headend, host, int(port))
    client.start()
    if args.topup:
        gateway, _, meter = args.topup.partition("/")
        needed = ("amount", "counter", "signing_key", "key_id")
        missing = [n for n in needed if getattr(args, n) is None]
        if missing or not meter:
            parser.error(
                "--topup needs GATEWAY/METER, --amount, --counter, --signing-key, --key-id"
            )
        key = Ed25519PrivateKey.from_private_bytes(
            bytes.fromhex(args.signing_key.read_text().strip())
        )
        result = client.vend_online(
            gateway,
            meter,
            signing_key=key,
            key_id=args.key_id,
            counter=args.counter,
            amount=args.amount,
            currency=args.currency,
        )
        verdict = "credited" if result["ok"] else f"refused ({result['error']})"
        print(f"top-up {verdict}: {result}")
    deadline = time.monotonic() + args.duration if args.duration else None
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(1.0)
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
    return 1 if any(gw.violations for gw in headend.gateways.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
