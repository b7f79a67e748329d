"""`make demo` / `python -m prepaid_demo`: a prepaid site in one command.

Starts a broker (the real ``mosquitto`` when installed, otherwise the embedded amqtt),
the meter simulator at an accelerated clock, and the gateway on a freshly provisioned
store, then shows a live view fed by the gateway's MQTT topics, as a headend sees them.
On a terminal the view is redrawn twice a second and on every resize, laid out for the
terminal's size (prepaid_demo.screen); otherwise (CI, a pipe) the story is printed as
plain lines. Ctrl-C, SIGTERM, a closed terminal (SIGHUP) or the end of ``--duration``
stops every child, removes the temporary site folder and exits 0 (the signals' handlers:
prepaid_demo.stops); a child that dies on its own makes the demo exit 1 (also with the
folder removed and nothing left running).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import queue
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from gateway.config import parse_config, to_toml
from gateway.private_files import make_private_dir, write_private_text
from gateway.startup import status_file
from meter_sim.control import request
from prepaid_demo.arguments import build_parser
from prepaid_demo.children import (
    ChildError,
    Children,
    address_after,
    free_port,
    mosquitto_binary,
    wait_for_port,
)
from prepaid_demo.screen import Status, compose
from prepaid_demo.stops import STOP_SIGNALS, StopRequested, Stops
from prepaid_demo.story import Director, Phase
from prepaid_demo.terminal import ENTER_VIEW, LEAVE_VIEW, Console, redraw
from prepaid_demo.view import ViewModel
from prepaid_demo.viewer import Viewer
from prepaid_demo.world import (
    GATEWAY_ID,
    LOW_CREDIT_UNITS,
    NIGHT_WINDOW,
    TIMEZONE,
    demo_start,
    gateway_config,
    plan_site,
    provision,
    settings_for,
)

HOST = "127.0.0.1"
REFRESH_S = 0.5
STARTUP_TIMEOUT_S = 30.0


class DemoError(Exception):
    """The demo cannot run (a bad flag, a missing broker, a child that died)."""


# --------------------------------------------------------------------------- the shell


@dataclass
class Demo:
    args: argparse.Namespace
    folder: Path
    console: Console
    live: bool
    children: Children = field(init=False)
    model: ViewModel = field(init=False)
    story: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)
    broker_label: str = ""
    broker_short: str = ""
    control: tuple[str, int] = (HOST, 0)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    stop_reason: str = ""
    #: set to redraw at once (a stop, a resized terminal) rather than at the next tick
    wake: asyncio.Event = field(default_factory=asyncio.Event)
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
            self.console.print(line)

    def request_stop(self, reason: str) -> None:
        """Stop at the next step; the first reason is the one reported."""
        if not self.stop.is_set():
            self.stop_reason = reason
        self.stop.set()
        self.wake.set()

    def checkpoint(self) -> None:
        """Between the steps of starting the site: give up if a stop came meanwhile."""
        if self.stop.is_set():
            raise StopRequested

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
            self.broker_short = f"mosquitto on {HOST}:{port}"
            async with asyncio.timeout(STARTUP_TIMEOUT_S):
                await wait_for_port(child, HOST, port)
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
        self.broker_short = f"amqtt (embedded) on {HOST}:{port}"
        return (HOST, port), False

    async def start_simulator(self) -> tuple[str, int]:
        start = demo_start(datetime.now(UTC))
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
        modbus = address_after(child, "modbus-tcp ")
        self.control = address_after(child, "control ")
        return modbus

    async def ctl(self, payload: dict[str, object]) -> dict[str, object]:
        reply = await request(*self.control, payload)
        if not reply.get("ok"):
            raise DemoError(f"simulator refused {payload}: {reply.get('error')}")
        result: dict[str, object] = reply["result"]
        return result

    async def run(self) -> int:
        """Start the site and watch it; 0, or ChildError/DemoError."""
        try:
            return await self._run()
        except StopRequested:
            return 0

    async def _run(self) -> int:
        self.say(f"site folder {self.folder}")
        self.checkpoint()
        broker, mqtt5 = await self.start_broker()
        self.say(f"broker: {self.broker_label}")
        self.checkpoint()
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
        self.model = ViewModel(GATEWAY_ID)
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
        self.checkpoint()
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
                sim = self.model.latest_ts  # None until the gateway's first message
                window = None if sim is None else windows.active(sim) is not None
                self.draw(viewer, status_path, director, window)
            if deadline is not None and time.monotonic() >= deadline:
                self.stop_reason = f"--duration {self.args.duration:g} s reached"
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REFRESH_S):
                    await self.wake.wait()
            self.wake.clear()
        return 0

    def draw(
        self, viewer: Viewer, status_path: Path, director: Director, window: bool | None
    ) -> None:
        """One frame of the live view, laid out for the terminal's size now."""
        status = Status(
            gateway=GATEWAY_ID,
            timezone=TIMEZONE,
            speed=self.args.speed,
            sim_time=self.model.latest_ts,
            broker=self.broker_label,
            broker_short=self.broker_short,
            viewer_connected=viewer.connected,
            gateway_state=self.model.gateway_state,
            health=_read_status(status_path),
            window=NIGHT_WINDOW.name,
            window_active=window,
            script=str(director.phase),
            focus=None if director.unit is None else director.meter,
        )
        width, height = self.console.size()
        lines = compose(self.model, status, self.story, width, height)
        self.console.write(redraw(lines, height))
        if self.console.gone:  # the terminal went away under us: a SIGHUP follows
            self.request_stop(STOP_SIGNALS[signal.SIGHUP])


def _read_status(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


async def _main(args: argparse.Namespace, live: bool) -> int:
    console = Console()
    stops = Stops(console)
    stops.install(asyncio.get_running_loop())
    if args.workdir is not None:
        make_private_dir(args.workdir)  # it holds the store: owner-only
        return await _run_demo(args, args.workdir, console, live, stops)
    # Created and removed while the handlers above are installed: every way out of the
    # demo but SIGKILL passes the removal (a SIGKILLed demo's children die with it).
    with tempfile.TemporaryDirectory(prefix="prepaid-demo-", ignore_cleanup_errors=True) as tmp:
        return await _run_demo(args, Path(tmp), console, live, stops)


async def _run_demo(
    args: argparse.Namespace, folder: Path, console: Console, live: bool, stops: Stops
) -> int:
    demo = Demo(args, folder, console, live)
    stops.demo = demo
    if stops.early is not None:
        demo.request_stop(stops.early)
    if live:
        console.write(ENTER_VIEW)
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
            console.write(LEAVE_VIEW)
            for line in demo.story:
                console.print(line)
        demo.live = False
        for line in report:
            demo.say(f"stopped: {line}")
        console.print(f"demo over ({demo.stop_reason or 'stopped'}); exit {code}")
        if code and demo.children.started:
            for child in demo.children.started:
                console.print(f"--- last lines of {child.log}", error=True)
                console.print(child.log.read_text(errors="replace")[-2000:], error=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    live = sys.stdout.isatty() and not args.plain
    return asyncio.run(_main(args, live))


if __name__ == "__main__":
    sys.exit(main())
