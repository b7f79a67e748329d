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
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.clock import GatewayClock
from gateway.collector import tune_collector
from gateway.command_intake import CommandIntake
from gateway.config import GatewayConfig
from gateway.measured import reading_fields
from gateway.mqtt_link import BrokerEndpoint, MqttError, MqttLink, PublishRefusedError, Will
from gateway.paho_client import client_class
from gateway.private_files import write_private_text
from gateway.rebirth import Rebirth
from gateway.resend import ResendQueue
from gateway.runtime import utc_now
from gateway.service import Gateway
from gateway.startup import (
    GatewayCrashedError,
    StartupError,
    brokers_of,
    check_site_files,
    crash_report,
    open_store_when_writable,
    status_file,
)
from gateway.store import Store, StoreError
from gateway.store_lock import StoreLock
from gateway.sync import Backoff, OutboxDrain, run_sessions
from protocol.home_assistant import discovery_messages
from protocol.mqtt import HealthSummary, StatusMessage, Topics, dump

log = logging.getLogger(__name__)

HEALTH_PERIOD_S = 60.0
PURGE_PERIOD_S = 3600.0


@dataclass
class Runner:
    config: GatewayConfig
    clock: Callable[[], datetime] = utc_now
    gateway: Gateway = field(init=False)
    drain: OutboxDrain = field(init=False)
    topics: Topics = field(init=False)
    intake: CommandIntake = field(init=False)
    resends: ResendQueue = field(init=False)
    rebirth: Rebirth = field(init=False)
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
    #: set by SIGHUP: meters enrolled since the start are to be loaded
    reload_wanted: asyncio.Event = field(default_factory=asyncio.Event)

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
            bus_faults={
                name: poller.faults.reason
                for name, poller in self.gateway.pollers.items()
                if poller.faults.reason is not None
            },
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
            "written_at": self.clock().isoformat(),  # the gateway's clock (maybe simulated)
            "written_at_real": datetime.now(UTC).isoformat(),  # what `status` ages it by
            "broker": self.broker_state,
            "broker_address": str(self.broker) if self.broker else None,
            "health": json.loads(self.health().model_dump_json()),
            "counters": vars(self.gateway.counters),
        }
        path = status_file(self.config)
        try:
            write_private_text(path, json.dumps(data, indent=2))
        except OSError as exc:
            # Best effort: the status file serves `meter-gateway status`, never enforcement.
            if not self._status_file_failing:
                log.warning("cannot write the status file %s: %s (retrying)", path, exc)
            self._status_file_failing = True
            return
        if self._status_file_failing:
            log.info("status file %s written again", path)
        self._status_file_failing = False

    async def _session(self, link: MqttLink) -> None:
        """One MQTT session: birth (status, then each meter's latest balance: see
        ``rebirth.py``, beside any Home Assistant discovery), commands, the outbox drain;
        offline on the way out."""
        # Subscribed before announcing online: a headend that sends a command when it sees
        # `online` is never ahead of the gateway's subscription (on a first session, when
        # the broker has nothing of ours to queue it for).
        await link.subscribe(*self.topics.command_subscriptions)
        await link.publish(self.topics.status, self.status_message(True), retain=True)

        async def commands() -> None:
            while True:
                msg = await link.incoming.get()
                await self.intake.answer(link, msg)  # its own boundary: never raises but
                # for the session ending (MqttError)

        async def health() -> None:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(HEALTH_PERIOD_S):
                        await self.status_changed.wait()
                self.status_changed.clear()
                try:
                    await link.publish(self.topics.status, self.status_message(True), retain=True)
                except PublishRefusedError as exc:
                    log.warning("status refused by the broker: %s", exc)

        try:
            try:
                async with asyncio.TaskGroup() as tg:
                    # The rebirth starts at `online`, not after the discovery configs: the
                    # time docs/mqtt.md gives for the retained view is counted from there.
                    tg.create_task(self.rebirth.run(link), name="mqtt-rebirth")
                    if self.config.home_assistant.enabled:
                        await self._publish_discovery(link)
                    self.mqtt_ready.set()
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
                measured=reading_fields(rt.target.io.regmap),
            ):
                try:
                    await link.publish(topic, json.dumps(config).encode(), retain=True)
                except PublishRefusedError as exc:
                    log.warning("discovery config %s refused by the broker: %s", topic, exc)

    def reload(self) -> None:
        """SIGHUP (sent by ``meter-provision enrol``): start polling the meters enrolled
        in the store since the start, without a restart."""
        self.reload_wanted.set()  # the reloader task (in the run's TaskGroup) does it

    async def _reloader(self) -> None:
        while True:
            await self.reload_wanted.wait()
            self.reload_wanted.clear()
            await self._reload(self.gateway)

    async def _reload(self, gateway: Gateway) -> None:
        try:
            added = await gateway.reload_meters()
        except StoreError as exc:
            log.error("reload: cannot read the store's meters: %s", exc)
            return
        if added:
            log.info("reload: now polling %d new meters: %s", len(added), ", ".join(added))
        else:
            log.info("reload: no new meters in the store")

    def _on_broker(self, state: str, broker: BrokerEndpoint | None) -> None:
        self.broker_state = state
        self.broker = broker
        self.write_status_file()  # `meter-gateway status` sees it now, not within 5 s

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
        self.gateway.core.on_commit = self.drain.wake.set
        self.gateway.core.on_storage = self._on_storage
        self.resends = ResendQueue(store.outbox_since_raw, store.outbox_seqs_since, self.topics)
        self.rebirth = Rebirth(store.latest_balance, lambda: list(self.gateway.meters), self.topics)
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
                tg.create_task(self._reloader(), name="reload")
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


def run_gateway(config: GatewayConfig, config_path: Path | None = None) -> int:
    """Check the config's and the store's files, take the store's lock, open the store
    and run until SIGTERM/SIGINT; the process's exit code. SIGHUP loads meters enrolled
    since the start."""
    tune_collector()
    check_site_files(config, config_path)
    brokers_of(config.mqtt)  # the TLS files are checked before anything starts
    client_class()  # the MQTT client's self-check: one warning now if it falls back
    # Until the event loop's handler is in place (before the meters are loaded), a
    # SIGHUP from `meter-provision enrol` must not end the process: load() sees them.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    lock: StoreLock | None = None

    async def main() -> None:
        nonlocal lock
        sim = config.simulation
        clock = GatewayClock(sim.clock_speed, sim.clock_start, sim.clock_anchor)
        runner = Runner(config, clock=clock.now)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, runner.stop.set)
        loop.add_signal_handler(signal.SIGHUP, runner.reload)
        lock, store = await open_store_when_writable(config, runner.stop)
        if store is None:
            return
        try:
            await runner.run(store)
        finally:
            store.close()

    try:
        asyncio.run(main())
    except StartupError:
        raise
    except Exception as exc:
        raise GatewayCrashedError(crash_report(config, exc)) from None
    finally:
        if lock is not None:
            lock.release()
    return 0
