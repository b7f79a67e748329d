"""`make demo` / `python -m prepaid_demo`: a prepaid site in one command.

Starts a broker (the real ``mosquitto`` when installed, otherwise the embedded amqtt),
the meter simulator at an accelerated clock, and the gateway on a freshly provisioned
store, then shows a live view fed by the gateway's MQTT topics, as a headend sees them.
On a terminal the view is a table redrawn twice a second; otherwise (CI, a pipe) the
story is printed as plain lines. Ctrl-C (or SIGTERM, or the end of ``--duration``) stops
every child and exits 0; a child that dies on its own makes the demo exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import math
import os
import queue
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn, TextIO
from zoneinfo import ZoneInfo

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import parse_config, to_toml
from gateway.private_files import make_private_dir, write_private_text
from gateway.runner import status_file
from meter_sim.control import request
from prepaid_demo.children import Child, ChildError, Children, free_port, mosquitto_binary
from prepaid_demo.story import Director, Phase
from prepaid_demo.view import ViewModel, render
from prepaid_demo.world import (
    GATEWAY_ID,
    LOW_CREDIT_UNITS,
    NIGHT_WINDOW,
    TIMEZONE,
    gateway_config,
    plan_site,
    provision,
    settings_for,
)

PROG = "prepaid-demo"
HOST = "127.0.0.1"
REFRESH_S = 0.5
STARTUP_TIMEOUT_S = 30.0
STORY_LINES_SHOWN = 8
MAX_SPEED = 100_000  # the gateway's [simulation] clock_speed limit


class DemoError(Exception):
    """The demo cannot run (a bad flag, a missing broker, a child that died)."""


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number above 0")
    return value


def _speed(text: str) -> float:
    value = _positive_float(text)
    if value > MAX_SPEED:
        raise argparse.ArgumentTypeError(f"{text!r}: the gateway's clock runs at most {MAX_SPEED}x")
    return value


def _meters(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 2 <= value <= 247:
        raise argparse.ArgumentTypeError(f"{text!r}: the demo runs 2 to 247 meters")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog=PROG,
        description="prepaid-edge in one command: simulator, broker and gateway, with a live "
        "view of the gateway's MQTT messages. Ctrl-C stops everything.",
    )
    parser.add_argument("--meters", type=_meters, default=20, help="simulated meters (default 20)")
    parser.add_argument(
        "--speed", type=_speed, default=60.0, help="simulated seconds per second (60)"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of loads and balances (1)")
    parser.add_argument(
        "--duration",
        type=_positive_float,
        metavar="SECONDS",
        help="run unattended this long, then stop everything and exit 0",
    )
    parser.add_argument(
        "--no-mosquitto",
        action="store_true",
        help="use the embedded pure-Python broker (amqtt) even if mosquitto is installed",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep the site's files here, created owner-only (default: a temporary folder)",
    )
    parser.add_argument(
        "--plain", action="store_true", help="print the story as lines even on a terminal"
    )
    return parser


# --------------------------------------------------------------------------- the viewer


@dataclass
class Viewer:
    """A headend-like MQTT subscriber to the gateway's topic tree (paho in its thread)."""

    broker: tuple[str, int]
    mqtt5: bool
    inbox: queue.SimpleQueue[tuple[str, bytes]] = field(default_factory=queue.SimpleQueue)
    connected: bool = False
    client: paho.Client = field(init=False)

    def __post_init__(self) -> None:
        protocol = paho.MQTTv5 if self.mqtt5 else paho.MQTTv311
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"demo-view-{os.getpid()}", protocol=protocol
        )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda _c, _u, msg: self.inbox.put((msg.topic, bytes(msg.payload)))

    def _on_connect(self, client: paho.Client, *_args: object) -> None:
        self.connected = True
        root = f"prepaid/v1/{GATEWAY_ID}"
        client.subscribe([(f"{root}/status", 1), (f"{root}/meters/+/+", 1)])

    def _on_disconnect(self, *_args: object) -> None:
        self.connected = False

    def start(self) -> None:
        self.client.connect_async(*self.broker, keepalive=10)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# --------------------------------------------------------------------------- the shell


@dataclass
class Demo:
    args: argparse.Namespace
    folder: Path
    out: TextIO
    live: bool
    children: Children = field(init=False)
    model: ViewModel = field(init=False)
    story: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)
    broker_label: str = ""
    control: tuple[str, int] = (HOST, 0)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    stop_reason: str = ""
    director: Director = field(default_factory=lambda: Director(LOW_CREDIT_UNITS))

    def __post_init__(self) -> None:
        self.children = Children(self.folder)
        self.director = Director(tuple(u for u in LOW_CREDIT_UNITS if u <= self.args.meters))

    def say(self, text: str) -> None:
        """A story line: shown under the live view, or printed at once in plain mode."""
        elapsed = time.monotonic() - self.started_at
        clock = ""
        if getattr(self, "model", None) is not None and self.model.latest_ts is not None:
            clock = " " + self.model.latest_ts.astimezone(ZoneInfo(TIMEZONE)).strftime("%a %H:%M")
        line = f"[{elapsed:5.1f}s{clock}] {text}"
        self.story.append(line)
        if not self.live:
            print(line, file=self.out, flush=True)

    async def start_broker(self) -> tuple[tuple[str, int], bool]:
        port = free_port(HOST)
        binary = None if self.args.no_mosquitto else mosquitto_binary()
        if binary is not None:
            conf = self.folder / "mosquitto.conf"
            lines = [
                f"listener {port} {HOST}",
                "allow_anonymous true",
                "persistence false",
                "max_queued_messages 100000",  # see docs/mqtt.md, Connection
                "max_inflight_messages 256",
            ]
            if os.geteuid() == 0:
                lines.append("user root")
            conf.write_text("\n".join(lines) + "\n")
            child = await self.children.start("broker", [binary, "-c", str(conf)])
            self.broker_label = f"mosquitto (real broker, {binary}) on {HOST}:{port}"
            await _wait_for_port(child, HOST, port)
            return (HOST, port), True
        if importlib.util.find_spec("amqtt") is None:
            raise DemoError(
                "no mosquitto on this machine and the embedded broker is not installed: "
                "pip install -e '.[demo]' (make demo does it), or install mosquitto"
            )
        child = await self.children.start(
            "broker", [sys.executable, "-m", "prepaid_demo.embedded_broker", HOST, str(port)]
        )
        await child.wait_for_line(lambda s: s.startswith("ready"), STARTUP_TIMEOUT_S)
        self.broker_label = f"amqtt (embedded pure-Python broker, MQTT 3.1.1) on {HOST}:{port}"
        return (HOST, port), False

    async def start_simulator(self) -> tuple[str, int]:
        start = _demo_start(datetime.now(UTC))
        child = await self.children.start(
            "simulator",
            [
                sys.executable,
                "-m",
                "meter_sim",
                "serve",
                "--meters",
                str(self.args.meters),
                "--tcp",
                f"{HOST}:0",
                "--control",
                f"{HOST}:0",
                "--speed",
                repr(self.args.speed),
                "--seed",
                str(self.args.seed),
                "--start",
                start.isoformat(),
            ],
        )
        await child.wait_for_line(lambda s: s.startswith("ready"), STARTUP_TIMEOUT_S)
        modbus = _address_after(child, "modbus-tcp ")
        self.control = _address_after(child, "control ")
        return modbus

    async def ctl(self, payload: dict[str, object]) -> dict[str, object]:
        reply = await request(*self.control, payload)
        if not reply.get("ok"):
            raise DemoError(f"simulator refused {payload}: {reply.get('error')}")
        result: dict[str, object] = reply["result"]
        return result

    async def run(self) -> int:
        self.say(f"site folder {self.folder}")
        broker, mqtt5 = await self.start_broker()
        self.say(f"broker: {self.broker_label}")
        modbus = await self.start_simulator()
        self.say(
            f"simulator: {self.args.meters} PE-1 meters on {modbus[0]}:{modbus[1]}, "
            f"speed {self.args.speed:g}x, seed {self.args.seed}"
        )
        classes: dict[int, str] = {}
        for unit in range(1, self.args.meters + 1):
            state = await self.ctl({"cmd": "state", "unit": unit})
            classes[unit] = str(state["customer_class"])
        plans = plan_site(classes, self.args.seed)
        for plan in plans:
            if plan.load_w is not None:
                await self.ctl({"cmd": "load", "unit": plan.unit, "watts": plan.load_w})
        sim_ms = int(str((await self.ctl({"cmd": "state", "unit": 1}))["time_ms"]))
        sim_now = datetime.fromtimestamp(sim_ms / 1000, UTC)
        store = self.folder / "gateway.db"
        provision(store, plans, sim_now)
        data = gateway_config(
            store=store,
            modbus=modbus,
            broker=broker,
            mqtt_protocol="5" if mqtt5 else "3.1.1",
            speed=self.args.speed,
            clock_start=sim_now,
        )
        config_path = self.folder / "gateway.toml"
        write_private_text(config_path, to_toml(data))  # the gateway refuses it otherwise
        config = parse_config(config_path.read_text(), str(config_path))
        self.model = ViewModel(GATEWAY_ID, self.broker_label)
        for plan in plans:
            row = self.model.row(plan.meter_id)
            row.customer_class, row.role = plan.customer_class, plan.role
        protected = [p.meter_id for p in plans if p.protected]
        low = [p.meter_id for p in plans if p.role == "low credit"]
        self.say(
            f"provisioned {len(plans)} meters: time-of-use tariffs by class, friendly-credit "
            f"window {NIGHT_WINDOW.name}, protected {', '.join(protected)}, "
            f"little credit and a big load: {', '.join(low)}"
        )
        viewer = Viewer(broker, mqtt5)
        viewer.start()
        try:
            await self.children.start(
                "gateway", [sys.executable, "-m", "gateway", "run", "--config", str(config_path)]
            )
            self.say(
                "started: " + ", ".join(f"{c.name} pid {c.pid}" for c in self.children.started)
            )
            return await self.watch(viewer, status_file(config))
        finally:
            viewer.stop()

    async def watch(self, viewer: Viewer, status_path: Path) -> int:
        """Feed the view, step the script and redraw until the end; 0, or ChildError."""
        director = self.director
        deadline = None if self.args.duration is None else time.monotonic() + self.args.duration
        windows = settings_for("residential").windows
        while not self.stop.is_set():
            while True:
                try:
                    topic, payload = viewer.inbox.get_nowait()
                except queue.Empty:
                    break
                for line in self.model.apply(topic, payload):
                    self.say(line)
            action = director.step(self.model, time.monotonic())
            if action is not None:
                self.say(action.line)
                await self.ctl({"cmd": "keypad", "unit": action.unit, "digits": action.digits})
            if director.phase is Phase.DONE and not any("story complete" in s for s in self.story):
                self.say(
                    "story complete: low credit, disconnection, top-up, reconnection, replay rejected"
                )
            dead = self.children.dead()
            if dead is not None:
                raise ChildError(f"{dead.name} exited with {dead.proc.returncode}")
            if self.live:
                self.draw(viewer, status_path, director, windows.active(self._sim_now()))
            if deadline is not None and time.monotonic() >= deadline:
                self.stop_reason = f"--duration {self.args.duration:g} s reached"
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REFRESH_S):
                    await self.stop.wait()
        return 0

    def _sim_now(self) -> datetime:
        return self.model.latest_ts or datetime.now(UTC)

    def draw(
        self, viewer: Viewer, status_path: Path, director: Director, window: str | None
    ) -> None:
        health = _read_status(status_path)
        sim = self._sim_now().astimezone(ZoneInfo(TIMEZONE))
        header = (
            f"prepaid-edge demo | gateway {GATEWAY_ID} | simulated time {sim:%a %d %b %H:%M} "
            f"({TIMEZONE}) at {self.args.speed:g}x | Ctrl-C stops"
        )
        gw = "gateway status: " + self.model.gateway_state
        if health is not None:
            h = health.get("health", {})
            gw += (
                f", broker link {health.get('broker')}, meters answering "
                f"{h.get('meters_online')}/{h.get('meters_total')}, "
                f"outbox {h.get('outbox_depth')} waiting"
            )
        footer = [
            f"broker: {self.broker_label} | viewer {'connected' if viewer.connected else 'connecting'}",
            gw,
            f"friendly credit: {NIGHT_WINDOW.name} "
            f"({'ACTIVE: no disconnections' if window else 'not active'}) | * protected supply"
            f" | demo script: {director.phase}",
        ]
        screen = render(
            self.model,
            header=header,
            footer=footer,
            story=self.story[-STORY_LINES_SHOWN:],
            width=shutil.get_terminal_size((120, 40)).columns,
        )
        self.out.write("\x1b[H" + screen.replace("\n", "\x1b[K\n") + "\x1b[K\x1b[J")
        self.out.flush()


def _read_status(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _address_after(child: Child, prefix: str) -> tuple[str, int]:
    for line in child.stdout_lines:
        if line.startswith(prefix):
            host, _, port = line[len(prefix) :].split()[0].rpartition(":")
            return host, int(port)
    raise DemoError(f"{child.name} did not say where it listens ({prefix.strip()})")


async def _wait_for_port(child: Child, host: str, port: int) -> None:
    """Until the broker accepts a connection (mosquitto prints nothing when ready)."""
    async with asyncio.timeout(STARTUP_TIMEOUT_S):
        while True:
            if child.proc.returncode is not None:
                raise ChildError(f"{child.name} exited with {child.proc.returncode}")
            try:
                _, writer = await asyncio.open_connection(host, port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return


def _demo_start(now: datetime) -> datetime:
    """17:30 local on the latest weekday: the evening peak is about to start and the night
    window is hours away, so credit runs out and supply is cut within the first minute."""
    tz = ZoneInfo(TIMEZONE)
    day = now.astimezone(tz).date()
    while day.weekday() >= 5:
        day -= timedelta(days=1)
    return datetime(day.year, day.month, day.day, 17, 30, tzinfo=tz)


async def _main(args: argparse.Namespace, folder: Path, live: bool) -> int:
    demo = Demo(args, folder, sys.stdout, live)
    loop = asyncio.get_running_loop()

    def stop(reason: str) -> None:
        demo.stop_reason = reason
        demo.stop.set()

    loop.add_signal_handler(signal.SIGINT, stop, "Ctrl-C")
    loop.add_signal_handler(signal.SIGTERM, stop, "SIGTERM")
    if live:
        sys.stdout.write("\x1b[?1049h\x1b[?25l")  # alternate screen, cursor hidden
    code = 0
    try:
        code = await demo.run()
    except (ChildError, DemoError, OSError) as exc:
        demo.stop_reason = f"error: {exc}"
        code = 1
    finally:
        report = await demo.children.stop_all()
        if demo.director.phase is not Phase.DONE:
            demo.say(f"story not complete: the demo was {demo.director.phase}")
        if live:
            sys.stdout.write("\x1b[?25h\x1b[?1049l")
            for line in demo.story:
                print(line)
        for line in report:
            demo.live = False
            demo.say(f"stopped: {line}")
        print(f"demo over ({demo.stop_reason or 'stopped'}); exit {code}", flush=True)
        if code and demo.children.started:
            for child in demo.children.started:
                print(f"--- last lines of {child.log}", file=sys.stderr)
                print(child.log.read_text(errors="replace")[-2000:], file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    live = sys.stdout.isatty() and not args.plain
    if args.workdir is not None:
        make_private_dir(args.workdir)  # it holds the store: owner-only
        return asyncio.run(_main(args, args.workdir, live))
    with tempfile.TemporaryDirectory(prefix="prepaid-demo-") as tmp:
        return asyncio.run(_main(args, Path(tmp), live))


if __name__ == "__main__":
    sys.exit(main())
