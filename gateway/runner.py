"""`meter-gateway run`: wire the service, the MQTT sessions and the signals together.

Tasks start inside one TaskGroup with names (``poll:{bus}``, ``core``, ``mqtt``,
``clock``, ``health``). SIGTERM or SIGINT stops the pollers and the core (a commit
already started finishes on the store's writer thread, which ``Store.close`` waits for:
it is never cut in half), publishes the retained ``offline`` status and disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import ssl
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from gateway.clock import GatewayClock
from gateway.collector import tune_collector
from gateway.command_intake import CommandIntake
from gateway.config import GatewayConfig, MqttSettings
from gateway.mqtt_link import BrokerEndpoint, MqttError, MqttLink, Will
from gateway.resend import ResendQueue
from gateway.service import Gateway, utc_now
from gateway.store import StorageUnavailableError, Store, StoreError
from gateway.sync import Backoff, OutboxDrain, run_sessions
from protocol.home_assistant import discovery_messages
from protocol.mqtt import HealthSummary, StatusMessage, Topics, dump

log = logging.getLogger(__name__)

HEALTH_PERIOD_S = 60.0
PURGE_PERIOD_S = 3600.0


class StartupError(Exception):
    """The gateway refuses to start (a clear one-line reason for the operator)."""


def check_secret_file(path: Path, what: str) -> None:
    """Refuse a key file that group or others can read."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise StartupError(f"{what} {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise StartupError(
            f"{what} {path} is readable by others (mode {stat.S_IMODE(mode):o}): chmod 600 it"
        )


def tls_context(mqtt: MqttSettings) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(mqtt.ca_file) if mqtt.ca_file else None)
    if mqtt.cert_file is not None and mqtt.key_file is not None:
        check_secret_file(mqtt.key_file, "MQTT client key")
        ctx.load_cert_chain(str(mqtt.cert_file), str(mqtt.key_file))
    return ctx


def brokers_of(mqtt: MqttSettings) -> list[BrokerEndpoint]:
    ctx = tls_context(mqtt) if any(b.tls for b in mqtt.brokers) else None
    return [BrokerEndpoint(b.host, b.port, ctx if b.tls else None) for b in mqtt.brokers]


def status_file(config: GatewayConfig) -> Path:
    return config.store.with_name(config.store.name + ".status.json")


@dataclass
class Runner:
    config: GatewayConfig
    clock: Callable[[], datetime] = utc_now
    gateway: Gateway = field(init=False)
    drain: OutboxDrain = field(init=False)
    topics: Topics = field(init=False)
    intake: CommandIntake = field(init=False)
    resends: ResendQueue = field(init=False)
    broker_state: str = "connecting"
    broker: BrokerEndpoint | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    #: set while an MQTT session is up and subscribed to commands
    mqtt_ready: asyncio.Event = field(default_factory=asyncio.Event)
    #: set when the health changed in a way the headend must see at once (storage)
    status_changed: asyncio.Event = field(default_factory=asyncio.Event)
    #: the status file could not be written (reported once, then quietly retried)
    _status_file_failing: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.topics = Topics(self.config.gateway_id)

    def health(self) -> HealthSummary:
        meters = self.gateway.meters.values()
        buses: dict[str, str] = {}
        for name in self.gateway.pollers:
            on_bus = [m for m in meters if m.stored.record.bus == name]
            ok = sum(1 for m in on_bus if m.state.comm_ok and m.last_reading_at is not None)
            buses[name] = "ok" if ok == len(on_bus) else "down" if ok == 0 else "degraded"
        counters = self.gateway.counters
        return HealthSummary(
            buses=buses,
            meters_total=len(self.gateway.meters),
            meters_online=sum(
                1 for m in meters if m.state.comm_ok and m.last_reading_at is not None
            ),
            outbox_depth=self.gateway.store.outbox_depth(),
            last_sync=self.drain.last_sync,
            storage=self.gateway.storage_problem or "ok",
            meters_quarantined=sum(1 for m in meters if m.quarantined),
            relay_mismatches=sum(1 for m in meters if m.state.relay_mismatch_reported),
            relay_retries=counters.relay_retries,
            internal_errors=counters.step_errors + self.intake.internal_errors,
        )

    def status_message(self, online: bool) -> bytes:
        return dump(
            StatusMessage(
                gateway=self.config.gateway_id,
                state="online" if online else "offline",
                ts=self.clock(),
                health=self.health() if online else None,
            )
        )

    def write_status_file(self) -> None:
        data = {
            "gateway": self.config.gateway_id,
            "written_at": self.clock().isoformat(),
            "broker": self.broker_state,
            "broker_address": str(self.broker) if self.broker else None,
            "health": json.loads(self.health().model_dump_json()),
            "counters": vars(self.gateway.counters),
        }
        path = status_file(self.config)
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(data, indent=2))
            os.replace(tmp, path)
        except OSError as exc:
            # Best effort: the status file serves `meter-gateway status`, never enforcement.
            if not self._status_file_failing:
                log.warning("cannot write the status file %s: %s (retrying)", path, exc)
            self._status_file_failing = True
            with contextlib.suppress(OSError):
                tmp.unlink()
            return
        if self._status_file_failing:
            log.info("status file %s written again", path)
        self._status_file_failing = False

    async def _session(self, link: MqttLink) -> None:
        """One MQTT session: birth, commands, the outbox drain; offline on the way out."""
        await link.publish(self.topics.status, self.status_message(True), retain=True)
        await link.subscribe(*self.topics.command_subscriptions)
        if self.config.home_assistant.enabled:
            await self._publish_discovery(link)
        self.mqtt_ready.set()

        async def commands() -> None:
            while True:
                msg = await link.incoming.get()
                await self.intake.handle(link, msg)  # its own boundary: never raises but
                # for the session ending (MqttError)

        async def health() -> None:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(HEALTH_PERIOD_S):
                        await self.status_changed.wait()
                self.status_changed.clear()
                await link.publish(self.topics.status, self.status_message(True), retain=True)

        try:
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self.drain.run(link), name="outbox-drain")
                    tg.create_task(commands(), name="mqtt-commands")
                    tg.create_task(health(), name="mqtt-health")
                    tg.create_task(self.resends.run(link), name="mqtt-resends")
            except* MqttError as group:
                self.mqtt_ready.clear()
                raise group.exceptions[0] from None
        except asyncio.CancelledError:
            self.mqtt_ready.clear()
            # A clean stop: say so before disconnecting (the Last Will is for crashes).
            with contextlib.suppress(MqttError, TimeoutError):
                async with asyncio.timeout(2.0):
                    await link.publish(self.topics.status, self.status_message(False), retain=True)
            raise

    async def _publish_discovery(self, link: MqttLink) -> None:
        for meter_id, rt in self.gateway.meters.items():
            currency = rt.state.settings.tariffs.at(self.clock()).currency
            for topic, config in discovery_messages(
                self.topics,
                meter_id,
                currency=currency,
                model=rt.stored.record.map_name.upper(),
                prefix=self.config.home_assistant.prefix,
            ):
                await link.publish(topic, json.dumps(config).encode(), retain=True)

    def _on_broker(self, state: str, broker: BrokerEndpoint | None) -> None:
        self.broker_state = state
        self.broker = broker

    def _on_storage(self, problem: str | None) -> None:
        """The store stopped or started committing: tell the headend now (status)."""
        del problem  # the health summary reads it from the gateway
        self.status_changed.set()

    async def _housekeeping(self) -> None:
        last_purge = time.monotonic()
        while True:
            self.write_status_file()
            await asyncio.sleep(5.0)
            if time.monotonic() - last_purge > PURGE_PERIOD_S:
                last_purge = time.monotonic()
                cutoff = self.clock() - timedelta(seconds=self.config.mqtt.retention_s)
                try:
                    purged = await self.gateway.store.purge_acked_async(cutoff)
                except StoreError as exc:
                    log.warning("purging acknowledged messages failed: %s (next hour)", exc)
                    continue
                if purged:
                    log.info("purged %d acknowledged messages older than %s", purged, cutoff)

    async def run(self, store: Store) -> None:
        mqtt = self.config.mqtt
        brokers = brokers_of(mqtt)
        self.gateway = Gateway(
            self.config, store, clock=self.clock, speed=self.config.simulation.clock_speed
        )
        self.drain = OutboxDrain(store, self.topics, clock=self.clock)
        self.gateway.on_commit = self.drain.wake.set
        self.gateway.on_storage = self._on_storage
        self.resends = ResendQueue(store.outbox_since, self.topics)
        self.intake = CommandIntake(
            self.gateway,
            self.topics,
            self.clock,
            self.resends,
            response_topics=mqtt.response_topics,
        )
        self.gateway.load()
        log.info(
            "gateway %s: %d meters on %d buses, %d messages waiting",
            self.config.gateway_id,
            len(self.gateway.meters),
            len(self.gateway.pollers),
            store.outbox_depth(),
        )
        offline = dump(StatusMessage(gateway=self.config.gateway_id, state="offline"))
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.gateway.run_core(), name="core")
                tg.create_task(self.gateway.run_pollers(), name="pollers")
                tg.create_task(self.gateway.run_clock(), name="clock")
                tg.create_task(self._housekeeping(), name="housekeeping")
                tg.create_task(
                    run_sessions(
                        brokers,
                        client_id=mqtt.client_id or self.config.gateway_id,
                        protocol=mqtt.protocol,
                        will=Will(self.topics.status, offline),
                        body=self._session,
                        backoff=Backoff(mqtt.reconnect_min_s, mqtt.reconnect_max_s),
                        keepalive=mqtt.keepalive_s,
                        max_inflight=mqtt.max_inflight,
                        session_expiry=mqtt.session_expiry_s,
                        on_state=self._on_broker,
                    ),
                    name="mqtt",
                )
                self.started.set()
                await self.stop.wait()
                raise _Stop
        except* _Stop:
            log.info("gateway %s stopped", self.config.gateway_id)
        finally:
            await self.gateway.close()
            with contextlib.suppress(OSError):
                self.write_status_file()


class _Stop(Exception):  # noqa: N818 (a signal to stop, not an error)
    """Raised inside the TaskGroup to cancel every task for a clean stop."""


#: First and longest wait between attempts to open a store whose file system is full or
#: read-only (the gateway waits for it rather than exit into a restart loop).
OPEN_RETRY_S = 2.0
OPEN_RETRY_MAX_S = 60.0


async def open_store_when_writable(path: Path, stop: asyncio.Event) -> Store | None:
    """The store, once its file system takes writes (None if stopped meanwhile). A full
    or read-only disk is waited out with one log line; anything else is a StartupError."""
    pause = OPEN_RETRY_S
    waiting = False
    while True:
        try:
            store = Store.open(path)
        except StorageUnavailableError as exc:
            if not waiting:
                log.error(
                    "store %s cannot be opened for writing (%s): waiting for space; meters "
                    "keep their relays as they are",
                    path,
                    exc,
                )
                waiting = True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await stop.wait()
            if stop.is_set():
                return None
            pause = min(OPEN_RETRY_MAX_S, pause * 2)
            continue
        except Exception as exc:
            raise StartupError(f"store {path}: {exc}") from None
        if waiting:
            log.warning("store %s writable again: starting", path)
        return store


def run_gateway(config: GatewayConfig) -> int:
    """Open the store and run until SIGTERM/SIGINT; the process's exit code."""
    tune_collector()

    async def main() -> None:
        sim = config.simulation
        clock = GatewayClock(sim.clock_speed, sim.clock_start, sim.clock_anchor)
        runner = Runner(config, clock=clock.now)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, runner.stop.set)
        store = await open_store_when_writable(config.store, runner.stop)
        if store is None:
            return
        try:
            await runner.run(store)
        finally:
            store.close()

    asyncio.run(main())
    return 0
