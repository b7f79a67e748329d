"""What every command shares: the gateway config, its store, a bus's port, and the
enrolment extras the store has no columns for yet (customer account, expected serial)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from gateway.public import (
    ConfigError,
    GatewayConfig,
    ModbusPort,
    RtuBus,
    RtuPort,
    Store,
    StoreError,
    StoreLock,
    StoreLockedError,
    StoreLockError,
    TcpBus,
    TcpPort,
    holder,
    load_config,
)
from provisioning.errors import ProvisionError
from provisioning.identity import write_atomic, write_private

__all__ = ["write_atomic"]  # the other commands write their files through site

Extras = dict[str, dict[str, str]]


def load_site_config(path: Path) -> GatewayConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise ProvisionError(str(exc)) from None


def open_store(config: GatewayConfig) -> Store:
    """The gateway's store; it must exist already (``init`` creates it)."""
    if not config.store.exists():
        raise ProvisionError(f"no store at {config.store}: run meter-provision init first")
    try:
        return Store.open(config.store)
    except StoreError as exc:
        raise ProvisionError(str(exc)) from None


def lock_store(config: GatewayConfig, command: str, why: str) -> StoreLock:
    """The store's lock, for a command that must not run beside a gateway (nor let one
    start meanwhile); refused with one line naming the holder's PID and what to do."""
    if not config.store.exists():
        raise ProvisionError(f"no store at {config.store}: run meter-provision init first")
    try:
        return StoreLock.acquire(config.store, f"meter-provision {command}")
    except StoreLockedError as exc:
        raise ProvisionError(
            f"{exc.holder} is using the store {config.store}: {why}; stop it first "
            f"(systemctl stop meter-gateway), then run {command} again"
        ) from None
    except StoreLockError as exc:
        raise ProvisionError(str(exc)) from None


def tell_gateway(config: GatewayConfig) -> str | None:
    """After meters were added to the store: SIGHUP to the gateway running on it, which
    then starts polling them. What happened, for the operator; None with no gateway."""
    try:
        running = holder(config.store)
    except StoreLockError as exc:
        return f"warning: {exc}: restart the gateway to poll the new meters"
    if running is None or not running.is_gateway or running.pid is None:
        return None
    try:
        os.kill(running.pid, signal.SIGHUP)
    except OSError as exc:
        return (
            f"warning: cannot signal the running {running} ({exc.strerror}): run "
            f"kill -HUP {running.pid} (or systemctl reload meter-gateway) to poll the new meters"
        )
    return f"the running {running} was told (SIGHUP): it polls the new meters now"


def bus_of(config: GatewayConfig, name: str) -> RtuBus | TcpBus:
    try:
        return config.bus(name)
    except KeyError:
        known = ", ".join(b.name for b in config.buses) or "none"
        raise ProvisionError(f"bus {name!r} is not in the config (buses: {known})") from None


def port_for(bus: RtuBus | TcpBus, timeout: float | None = None) -> ModbusPort:
    """The gateway's own port for ``bus``; ``timeout`` shortens it (a scan's probes)."""
    if isinstance(bus, TcpBus):
        return TcpPort(
            bus.name,
            bus.host,
            bus.port,
            concurrency=bus.concurrency,
            timeout=timeout or bus.timeout_s,
            connect_timeout=min(3.0, timeout * 4) if timeout else 3.0,
        )
    return RtuPort(
        bus.name,
        bus.device,
        baud=bus.baud,
        timeout=timeout or bus.timeout_s,
        guard=bus.guard_s,
        parity=bus.parity,
        stopbits=bus.stopbits,
    )


def extras_path(config: GatewayConfig) -> Path:
    return config.store.with_name(config.store.name + ".enrolment.json")


def load_extras(config: GatewayConfig) -> Extras:
    path = extras_path(config)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ProvisionError(f"{path} is unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise ProvisionError(f"{path} is not an enrolment extras file")
    return {str(k): {str(a): str(b) for a, b in v.items()} for k, v in data.items()}


def save_extras(config: GatewayConfig, extras: Extras) -> None:
    write_private(extras_path(config), json.dumps(extras, indent=2, sort_keys=True) + "\n")
