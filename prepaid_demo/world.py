"""The demo site as data: which meter gets which tariff, credit and load, and the files a
gateway needs (its store with the enrolled meters and its gateway.toml).

The story is fixed by the plan, not by chance: meter 1 is protected supply with little
credit and a big load (it runs into debt but is never cut), a few meters start with
little credit under a big load so they run out within seconds, and the rest have days of
credit on their customer class's profile.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from gateway.core.meter_state import enrol
from gateway.core.settings import MeterSettings
from gateway.core.tariff import DayType, Tariff, TariffSchedule, TimeOfUsePricing, TouPeriod
from gateway.core.windows import NoDisconnectWindows, WeeklyWindow
from gateway.store import MeterRecord, Store
from protocol.tokens.keypad import issue_keypad
from protocol.tokens.keys import derive_meter_key
from protocol.tokens.token_class import TokenClass

#: A key for the demo only, public by construction: never use it for a real site.
DEMO_VENDING_KEY = hashlib.sha256(b"prepaid-edge demo vending key (public, demo only)").digest()
GATEWAY_ID = "gw-demo"
CURRENCY = "KES"
TIMEZONE = "Africa/Nairobi"
BUS = "sim-tcp"
PROTECTED_UNIT = 1
#: Meters that start with little credit under a big load: they run out first.
LOW_CREDIT_UNITS = (2, 7, 13)
BIG_LOAD_W = 9_000
TOP_UP_AMOUNT = 50_000  # 500.00 KES, exactly representable on the keypad
ALL_DAYS = frozenset(DayType)
WEEKDAYS = frozenset({DayType.WEEKDAY})
#: Friendly credit: no disconnection at night, every day.
NIGHT_WINDOW = WeeklyWindow("night 22:00-06:00", frozenset(range(7)), time(22), time(6))


def meter_id(unit: int) -> str:
    return f"PE1-{unit:06d}"


def _tou(periods: tuple[TouPeriod, ...], default: str) -> Tariff:
    return Tariff(
        currency=CURRENCY,
        energy=TimeOfUsePricing(periods, Decimal(default)),
        standing_charge_per_day=500,
        timezone=TIMEZONE,
    )


#: Time-of-use tariffs by customer class, prices in minor units per kWh.
TARIFFS: dict[str, Tariff] = {
    "residential": _tou(
        (
            TouPeriod(ALL_DAYS, time(18), time(22), Decimal(3000)),
            TouPeriod(ALL_DAYS, time(23), time(6), Decimal(1500)),
        ),
        "2500",
    ),
    "shop": _tou((TouPeriod(WEEKDAYS, time(8), time(20), Decimal(2800)),), "2200"),
    "workshop": _tou((TouPeriod(WEEKDAYS, time(7), time(17), Decimal(2600)),), "2000"),
}


def settings_for(customer_class: str) -> MeterSettings:
    """Small thresholds so the demo's story fits in a minute at 60x."""
    return MeterSettings(
        tariffs=TariffSchedule.single(TARIFFS.get(customer_class, TARIFFS["residential"])),
        alarm1=3_000,
        alarm2=1_500,
        overdraft_limit=1_000,
        reconnect_threshold=500,
        max_balance=5_000_000,
        windows=NoDisconnectWindows(TIMEZONE, (NIGHT_WINDOW,)),
    )


@dataclass(frozen=True, slots=True)
class MeterPlan:
    unit: int
    customer_class: str
    opening_balance: int
    load_w: int | None  # None: the customer class's profile
    protected: bool = False

    @property
    def meter_id(self) -> str:
        return meter_id(self.unit)

    @property
    def role(self) -> str:
        if self.protected:
            return "protected"
        return "low credit" if self.load_w is not None else ""


def plan_site(classes: dict[int, str], seed: int) -> list[MeterPlan]:
    """One plan per meter: ``classes`` are the simulator's customer classes by unit."""
    rng = random.Random(seed)
    plans = []
    for unit in sorted(classes):
        cls = classes[unit]
        if unit == PROTECTED_UNIT:
            plans.append(MeterPlan(unit, cls, 4_000, BIG_LOAD_W, protected=True))
        elif unit in LOW_CREDIT_UNITS:
            rank = LOW_CREDIT_UNITS.index(unit)
            plans.append(MeterPlan(unit, cls, 4_000 + 1_500 * rank, BIG_LOAD_W))
        else:
            plans.append(MeterPlan(unit, cls, rng.randrange(40_000, 400_000, 500), None))
    return plans


def provision(store_path: Path, plans: list[MeterPlan], now: datetime) -> None:
    """Enrol every planned meter in a new store, with its key derived from the vending key."""
    with Store.open(store_path) as store:
        for plan in plans:
            key = derive_meter_key(DEMO_VENDING_KEY, plan.meter_id, 0)
            state = enrol(
                plan.meter_id,
                settings_for(plan.customer_class),
                now,
                opening_balance=plan.opening_balance,
                protected=plan.protected,
            )
            record = MeterRecord(plan.meter_id, BUS, plan.unit, "pe1", key.secret, 0)
            store.add_meter(record, state, now)


def keypad_token(unit: int, counter: int, amount: int = TOP_UP_AMOUNT) -> str:
    """What the vending office would sell for ``unit``: 20 digits."""
    return issue_keypad(DEMO_VENDING_KEY, meter_id(unit), 0, TokenClass.CREDIT, counter, amount)


def gateway_config(
    *,
    store: Path,
    modbus: tuple[str, int],
    broker: tuple[str, int],
    mqtt_protocol: str,
    speed: float,
    clock_start: datetime,
) -> dict[str, Any]:
    """The gateway.toml of the demo site, as data."""
    return {
        "gateway_id": GATEWAY_ID,
        "store": str(store),
        "log_level": "WARNING",
        "buses": [
            {
                "name": BUS,
                "kind": "tcp",
                "host": modbus[0],
                "port": modbus[1],
                "timeout_s": 1.0,
                "retries": 1,
            }
        ],
        "mqtt": {
            "brokers": [{"host": broker[0], "port": broker[1], "tls": False}],
            "protocol": mqtt_protocol,
            "reconnect_min_s": 0.2,
            "reconnect_max_s": 2.0,
            "keepalive_s": 10,
        },
        "polling": {
            "interval_s": 1.0,
            "min_interval_s": 0.5,
            "max_interval_s": 3.0,
            "backoff_max_s": 3.0,
        },
        "tokens": {"currency": CURRENCY},
        "simulation": {"clock_speed": speed, "clock_start": clock_start.isoformat()},
    }


def demo_start(now: datetime) -> datetime:
    """17:30 local on the latest weekday: the evening peak is about to start and the night
    window is hours away, so credit runs out and supply is cut within the first minute."""
    tz = ZoneInfo(TIMEZONE)
    day = now.astimezone(tz).date()
    while day.weekday() >= 5:
        day -= timedelta(days=1)
    return datetime(day.year, day.month, day.day, 17, 30, tzinfo=tz)
