"""`meter-gateway run`: wire the service, the MQTT sessions and the signals together.

Tasks start inside one TaskGroup with names (``poll:{bus}``, ``core``, ``mqtt``,
``clock``, ``health``). SIGTERM or SIGINT stops the pollers and the core (a commit
already started finishes on the store's writer thread, which ``Store.close`` waits for:
it is never cut in half), publishes the retained ``offline`` status and disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import signal
import ssl
import stat
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from gateway.clock import GatewayClock
from gateway.collector import tune_collector
from gateway.command_intake import CommandIntake
from gateway.config import GatewayConfig, MqttSettings
from gateway.errors import GatewayError
from gateway.mqtt_link import BrokerEndpoint, MqttError, MqttLink, PublishRefusedError, Will
from gateway.paho_client import client_class
from gateway.private_files import PRIVATE_DIR, PRIVATE_FILE, open_to_others, write_private_text
from gateway.resend import ResendQueue
from gateway.service import Gateway, utc_now
from gateway.store import StorageUnavailableError, Store, StoreError, storage_problem
from gateway.store_lock import GATEWAY, StoreLock, StoreLockedError, StoreLockError, lock_path
from gateway.sync import Backoff, OutboxDrain, run_sessions
from protocol.home_assistant import discovery_messages
from protocol.mqtt import HealthSummary, StatusMessage, Topics, dump

log = logging.getLogger(__name__)

HEALTH_PERIOD_S = 60.0
PURGE_PERIOD_S = 3600.0


class StartupError(GatewayError):
    """The gateway refuses to start (a clear one-line reason for the operator)."""


class GatewayCrashedError(GatewayError):
    """A fault of the gateway's own that no boundary held: one line for the operator, the
    traceback in a file beside the store (systemd restarts the service)."""


def crash_report(config: GatewayConfig, exc: BaseException) -> str:
    """Write the traceback beside the store (best effort); the one line that names it."""
    path = config.store.with_name(config.store.name + ".crash.txt")
    text = "".join(traceback.format_exception(exc))
    try:
        write_private_text(path, f"{datetime.now(UTC).isoformat()}\n{text}")
        where = f"traceback in {path}"
    except OSError as err:
        log.critical("internal fault (the traceback file could not be written):\n%s", text)
        where = f"traceback not written ({path}: {err.strerror}), see the log"
    first = exc.exceptions[0] if isinstance(exc, BaseExceptionGroup) and exc.exceptions else exc
    return f"internal fault: {type(first).__name__}: {first} ({where})"


def check_secret_file(path: Path, what: str) -> None:
    """Refuse a secret (a key file, the config, the store's folder or one of its files)
    that group or others may read, write or enter, as ssh does for keys: one line naming
    the path and the ``chmod`` that fixes it."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise StartupError(f"{what} {path}: {exc.strerror}") from None
    if open_to_others(mode):
        fix = PRIVATE_DIR if stat.S_ISDIR(mode) else PRIVATE_FILE
        raise StartupError(
            f"{what} {path} is readable or writable by group/others "
            f"(mode {stat.S_IMODE(mode):04o}): chmod {fix:o} {path}"
        )


def check_site_files(config: GatewayConfig, config_path: Path | None) -> None:
    """The config, the store's folder and every file of the store that exists, each
    owner-only."""
    if config_path is not None:
        check_secret_file(config_path, "config")
    check_secret_file(config.store.absolute().parent, "store folder")
    for path in store_files(config):
        if path.exists():
            check_secret_file(path, "store file")


def _tls_problem(key: str, path: Path, problem: str) -> StartupError:
    return StartupError(f"{key} {path}: {problem}")


def _read_tls_file(key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _tls_problem(key, path, exc.strerror or str(exc)) from None


def tls_context(mqtt: MqttSettings) -> ssl.SSLContext:
    """The TLS context for the brokers; a file it cannot use stops the start with one
    line naming the file and its config key."""
    ca = mqtt.ca_file
    if ca is not None:
        _read_tls_file("mqtt.ca_file", ca)
    try:
        ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    except ssl.SSLError as exc:
        raise _tls_problem(
            "mqtt.ca_file", ca or Path(), f"no PEM CA certificate in it ({exc.reason})"
        ) from None
    except OSError as exc:
        raise _tls_problem("mqtt.ca_file", ca or Path(), exc.strerror or str(exc)) from None
    cert, key = mqtt.cert_file, mqtt.key_file
    if (cert is None) != (key is None):
        given, missing = ("mqtt.cert_file", "mqtt.key_file")[:: 1 if cert else -1]
        raise StartupError(f"{given} is set: {missing} is needed with it")
    if cert is not None and key is not None:
        check_secret_file(key, "mqtt.key_file")
        try:
            x509.load_pem_x509_certificates(_read_tls_file("mqtt.cert_file", cert))
        except ValueError:
            raise _tls_problem("mqtt.cert_file", cert, "not a PEM certificate") from None
        try:
            serialization.load_pem_private_key(_read_tls_file("mqtt.key_file", key), None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise _tls_problem(
                "mqtt.key_file", key, "not a PEM private key (without a passphrase)"
            ) from None
        try:
            ctx.load_cert_chain(str(cert), str(key))
        except (ssl.SSLError, OSError) as exc:
            why = getattr(exc, "reason", None) or exc.strerror or str(exc)
            raise _tls_problem(
                "mqtt.key_file", key, f"does not go with mqtt.cert_file {cert} ({why})"
            ) from None
    return ctx


def brokers_of(mqtt: MqttSettings) -> list[BrokerEndpoint]:
    ctx = tls_context(mqtt) if any(b.tls for b in mqtt.brokers) else None
    return [BrokerEndpoint(b.host, b.port, ctx if b.tls else None) for b in mqtt.brokers]


def status_file(config: GatewayConfig) -> Path:
    return config.store.with_name(config.store.name + ".status.json")


def store_files(config: GatewayConfig) -> list[Path]:
    """The store's files: the database, SQLite's write-ahead log and shared memory, the
    status file and the lock file."""
    store = config.store
    return [
        store,
        *(store.with_name(store.name + s) for s in ("-wal", "-shm")),
        status_file(config),
        lock_path(store),
    ]


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
    _reloads: set[asyncio.Task[None]] = field(default_factory=set)

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
            "written_at": self.clock().isoformat(),
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
        """One MQTT session: birth, commands, the outbox drain; offline on the way out."""
        await link.publish(self.topics.status, self.status_message(True), retain=True)
        await link.subscribe(*self.topics.command_subscriptions)
        if self.config.home_assistant.enabled:
            await self._publish_discovery(link)
        self.mqtt_ready.set()

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
                try:
                    await link.publish(topic, json.dumps(config).encode(), retain=True)
                except PublishRefusedError as exc:
                    log.warning("discovery config %s refused by the broker: %s", topic, exc)

    def reload(self) -> None:
        """SIGHUP (sent by ``meter-provision enrol``): start polling the meters enrolled
        in the store since the start, without a restart."""
        gateway: Gateway | None = getattr(self, "gateway", None)
        if gateway is None:
            return  # not loaded yet: load() will find them
        task = asyncio.get_running_loop().create_task(self._reload(gateway), name="reload")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

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
        self.resends = ResendQueue(store.outbox_since, store.outbox_seqs_since, self.topics)
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
            for task in self._reloads:
                task.cancel()
            await self.gateway.close()
            with contextlib.suppress(OSError):
                self.write_status_file()


class _Stop(Exception):  # noqa: N818 (a signal to stop, not an error)
    """Raised inside the TaskGroup to cancel every task for a clean stop."""


#: First and longest wait between attempts to open a store whose file system is full or
#: read-only (the gateway waits for it rather than exit into a restart loop).
OPEN_RETRY_S = 2.0
OPEN_RETRY_MAX_S = 60.0


class _StoreNotWritableYetError(Exception):
    """The store's file system cannot take writes now: wait, it may clear by itself."""


def check_store_writable(config: GatewayConfig) -> None:
    """Each of the store's database files that exists opens for writing: one line with
    the OS's reason otherwise (a file of another user). A read-only or full file system
    is not refused here: it is waited out (``_StoreNotWritableYetError``)."""
    for path in store_files(config)[:3]:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.ENOSPC):
                raise _StoreNotWritableYetError(f"{path}: {exc.strerror}") from None
            raise StartupError(f"store {path}: cannot write: {exc.strerror}") from None
        os.close(fd)


def take_store_lock(config: GatewayConfig) -> StoreLock:
    """This gateway's lock on the store, for its whole life; one line if it is held."""
    try:
        return StoreLock.acquire(config.store, GATEWAY)
    except StoreLockedError as exc:
        raise StartupError(
            f"store {config.store} is in use by {exc.holder} (lock file {exc.path}): "
            "one gateway per store; stop that one first"
        ) from None
    except StoreLockError as exc:
        if storage_problem(config.store) is not None:
            raise _StoreNotWritableYetError(str(exc)) from None
        raise StartupError(f"store folder {config.store.parent}: {exc}") from None


def _lock_and_open(config: GatewayConfig, lock: StoreLock | None) -> tuple[StoreLock, Store]:
    """The store's lock (kept if already held) and the store, or _StoreNotWritableYetError."""
    lock = lock or take_store_lock(config)
    check_store_writable(config)
    try:
        return lock, Store.open(config.store)
    except StorageUnavailableError as exc:
        raise _StoreNotWritableYetError(str(exc)) from None
    except StoreError as exc:
        raise StartupError(str(exc)) from None
    except Exception as exc:
        raise StartupError(f"store {config.store}: {exc}") from None


async def open_store_when_writable(
    config: GatewayConfig, stop: asyncio.Event
) -> tuple[StoreLock | None, Store | None]:
    """The store's lock and the store, once its file system takes writes (no store if
    stopped meanwhile). A full or read-only disk is waited out with one log line, meters
    keeping their relays as they are; anything else is a StartupError."""
    pause = OPEN_RETRY_S
    waiting = False
    lock: StoreLock | None = None
    while True:
        try:
            lock, store = _lock_and_open(config, lock)
        except _StoreNotWritableYetError as exc:
            if not waiting:
                log.error(
                    "store %s cannot be opened for writing (%s): waiting for it; meters "
                    "keep their relays as they are",
                    config.store,
                    exc,
                )
                waiting = True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await stop.wait()
            if stop.is_set():
                return lock, None
            pause = min(OPEN_RETRY_MAX_S, pause * 2)
            continue
        if waiting:
            log.warning("store %s writable again: starting", config.store)
        return lock, store


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
