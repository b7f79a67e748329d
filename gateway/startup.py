"""Before the gateway runs: the checks that refuse a start with one line (file modes, TLS
files, the store's lock and writability), the wait for a store whose file system is full or
read-only, and the one line a fault no boundary held ends the process with."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import ssl
import stat
import traceback
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from gateway.config import GatewayConfig, MqttSettings
from gateway.errors import GatewayError
from gateway.mqtt_link import BrokerEndpoint
from gateway.private_files import PRIVATE_DIR, PRIVATE_FILE, open_to_others, write_private_text
from gateway.store import StorageUnavailableError, Store, StoreError, storage_problem
from gateway.store_lock import GATEWAY, StoreLock, StoreLockedError, StoreLockError, lock_path

log = logging.getLogger(__name__)


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
