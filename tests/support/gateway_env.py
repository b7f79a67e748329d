"""Build a gateway's world for tests: a store with enrolled PE-1 meters, a config pointing
at a simulator and a broker, and the vending keys to make tokens for them."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.config import GatewayConfig, to_toml

__all__ = ["to_toml"]  # tests import the config writer from here too
from gateway.core.meter_state import enrol
from gateway.core.settings import MeterSettings
from gateway.core.tariff import FlatPricing, Tariff, TariffSchedule
from gateway.store import MeterRecord, Store
from protocol.tokens.keypad import issue_keypad
from protocol.tokens.keys import derive_meter_key
from protocol.tokens.online import issue_online
from protocol.tokens.token_class import TokenClass

VENDING_KEY = bytes(range(32))
ONLINE_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))
HEADEND_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(200, 232)))


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def meter_id(unit: int) -> str:
    return f"PE1-{unit:06d}"


def fast_settings(price_per_kwh: str = "100", **overrides: Any) -> MeterSettings:
    """Settings that run out quickly under a test load: small thresholds, no overdraft."""
    tariff = Tariff(currency="KES", energy=FlatPricing(Decimal(price_per_kwh)))
    values: dict[str, Any] = {
        "tariffs": TariffSchedule.single(tariff),
        "alarm1": 400,
        "alarm2": 200,
        "overdraft_limit": 0,
        "reconnect_threshold": 50,
        "max_balance": 10_000_000,
        "rated_power_w": 23_000,
        "plausibility_margin_percent": 200,
    }
    values.update(overrides)
    return MeterSettings(**values)


@dataclass
class GatewayWorld:
    folder: Path
    store_path: Path
    gateway_id: str = "gw-test"
    counters: dict[str, int] = field(default_factory=dict)

    def enrol(
        self,
        units: range | list[int],
        *,
        bus: str = "tcp-1",
        opening_balance: int = 1_000,
        settings: MeterSettings | None = None,
        now: datetime | None = None,
        protected: bool = False,
        place: Callable[[int], tuple[str, int]] | None = None,
        map_name: str = "pe1",
    ) -> None:
        """Enrol meters ``meter_id(n)`` for each n, at unit n of ``bus``, or where
        ``place(n)`` says ((bus, unit): more than 247 meters span several ports)."""
        now = now or datetime.now(UTC)
        meters = []
        for n in units:
            mid = meter_id(n)
            where, unit = place(n) if place is not None else (bus, n)
            key = derive_meter_key(VENDING_KEY, mid, 0)
            state = enrol(
                mid,
                settings or fast_settings(),
                now,
                opening_balance=opening_balance,
                protected=protected,
            )
            meters.append((MeterRecord(mid, where, unit, map_name, key.secret, 0), state))
        with Store.open(self.store_path) as store:
            store.add_meters(meters, now)

    def keypad_token(self, unit: int, amount: int, counter: int | None = None) -> str:
        mid = meter_id(unit)
        if counter is None:
            counter = self.counters.get(mid, 0) + 1
        self.counters[mid] = max(counter, self.counters.get(mid, 0))
        return issue_keypad(VENDING_KEY, mid, 0, TokenClass.CREDIT, counter, amount)

    def config(self, **kw: Any) -> GatewayConfig:
        return GatewayConfig.model_validate(self.config_data(**kw))

    def write_config(self, **kw: Any) -> Path:
        return self.write_config_data(self.config_data(**kw))

    def write_config_data(self, data: dict[str, Any]) -> Path:
        """``gateway.toml`` in the folder, owner-only (the gateway refuses it otherwise)."""
        path = self.folder / "gateway.toml"
        path.write_text(to_toml(data))
        path.chmod(0o600)
        return path

    def config_data(
        self,
        *,
        tcp: tuple[str, int] | None = None,
        rtu: str | None = None,
        broker: tuple[str, int] | list[tuple[str, int]] | None = None,
        speed: float = 1.0,
        start: datetime | None = None,
        interval: float = 0.5,
        timeout: float = 0.5,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        buses: list[dict[str, Any]] = []
        if tcp is not None:
            buses.append(
                {
                    "name": "tcp-1",
                    "kind": "tcp",
                    "host": tcp[0],
                    "port": tcp[1],
                    "timeout_s": timeout,
                    "retries": 0,
                }
            )
        if rtu is not None:
            buses.append(
                {
                    "name": "rtu-1",
                    "kind": "rtu",
                    "device": rtu,
                    "baud": 115200,
                    "timeout_s": timeout,
                    "retries": 0,
                }
            )
        brokers = broker if isinstance(broker, list) else [broker] if broker else [("127.0.0.1", 1)]
        data: dict[str, Any] = {
            "gateway_id": self.gateway_id,
            "store": str(self.store_path),
            "buses": buses,
            "mqtt": {
                "brokers": [{"host": h, "port": p, "tls": False} for h, p in brokers],
                "reconnect_min_s": 0.1,
                "reconnect_max_s": 1.0,
                "keepalive_s": 5,
            },
            "polling": {
                "interval_s": interval,
                "min_interval_s": min(interval, 0.2),
                "max_interval_s": max(interval, 1.0),
                "backoff_max_s": 2.0,
            },
            "tokens": {
                "currency": "KES",
                "online_public_keys": {"vend-1": b64(ONLINE_KEY.public_key().public_bytes_raw())},
                "headend_public_keys": {"hq-1": b64(HEADEND_KEY.public_key().public_bytes_raw())},
            },
            "simulation": {
                "clock_speed": speed,
                # `start` is the simulator's time now: the gateway's clock reads it at this
                # real instant, whenever the gateway (re)starts from this config.
                **(
                    {
                        "clock_start": start.isoformat(),
                        "clock_anchor": datetime.now(UTC).isoformat(),
                    }
                    if start
                    else {}
                ),
            },
        }
        if extra:
            data.update(extra)
        return data


def in_future(minutes: int = 5) -> datetime:
    return datetime.now(UTC) + timedelta(minutes=minutes)


def online_token(
    unit: int,
    counter: int,
    amount: int,
    *,
    valid_for: timedelta | None = None,
    meter: str | None = None,
) -> str:
    """A vending-service online credit token for meter ``unit`` (or the meter named)."""
    now = datetime.now(UTC)
    return issue_online(
        ONLINE_KEY,
        "vend-1",
        meter or meter_id(unit),
        counter,
        TokenClass.CREDIT,
        amount,
        "KES",
        counter.to_bytes(16, "big"),
        now - timedelta(minutes=1),
        now + (valid_for or timedelta(days=2)),
    )
