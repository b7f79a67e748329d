"""What the premises draw and what the meter measures: pure functions of (seed, unit, minute).

Each customer class has a daily shape (mean W at each hour, linear in between); a
household scales it (0.6x..1.4x, by seed) and seeded noise moves it each minute
(0.7x..1.3x). Voltage, frequency and power factor are seeded per minute too. Everything
is an integer, so the same seed gives the same readings whoever polls when.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class CustomerClass(StrEnum):
    RESIDENTIAL = "residential"
    SHOP = "shop"
    WORKSHOP = "workshop"


#: Mean demand in W at each hour of the day (linear in between), weekdays.
# fmt: off
DAILY_SHAPE: dict[CustomerClass, tuple[int, ...]] = {
    CustomerClass.RESIDENTIAL: (
        180, 150, 140, 140, 150, 220, 480, 850, 700, 420, 350, 360,
        420, 380, 340, 360, 480, 820, 1250, 1400, 1200, 900, 520, 260,
    ),
    CustomerClass.SHOP: (
        220, 200, 200, 200, 200, 220, 300, 900, 1500, 1700, 1800, 1900,
        1900, 1800, 1800, 1850, 1900, 1800, 1600, 1300, 800, 300, 240, 220,
    ),
    CustomerClass.WORKSHOP: (
        300, 300, 300, 300, 300, 350, 900, 3200, 4200, 4600, 4800, 4500,
        3000, 4300, 4700, 4600, 4000, 2500, 800, 400, 350, 300, 300, 300,
    ),
}
# fmt: on
#: Weekend shape for the workshop (closed); the other classes keep their weekday shape.
WORKSHOP_WEEKEND = (300,) * 24
#: Typical power factor in thousandths by class.
BASE_POWER_FACTOR: dict[CustomerClass, int] = {
    CustomerClass.RESIDENTIAL: 960,
    CustomerClass.SHOP: 910,
    CustomerClass.WORKSHOP: 830,
}

_MASK64 = (1 << 64) - 1


def round_div(numerator: int, denominator: int) -> int:
    """The simulator's one rounding: ``numerator / denominator`` rounded half up."""
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    return (2 * numerator + denominator) // (2 * denominator)


def mix64(*parts: int) -> int:
    """A deterministic 64-bit hash of integers (splitmix64 steps): seeded noise, no state."""
    h = 0x9E3779B97F4A7C15
    for part in parts:
        h = (h ^ (part & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h


def customer_class_for(seed: int, unit: int) -> CustomerClass:
    """The default class of a meter: 70% residential, 20% shops, 10% workshops, by seed."""
    pick = mix64(seed, unit, 7) % 10
    if pick < 7:
        return CustomerClass.RESIDENTIAL
    return CustomerClass.SHOP if pick < 9 else CustomerClass.WORKSHOP


def profile_w(customer_class: CustomerClass, key: int, scale_permille: int, minute: int) -> int:
    """The premises' demand in W during ``minute`` (since the epoch): the class's shape at
    that time of day and week, scaled for the household (``scale_permille``) and noised
    per minute by the meter's ``key``."""
    day, minute_of_day = divmod(minute, 1440)
    weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
    shape = DAILY_SHAPE[customer_class]
    if customer_class is CustomerClass.WORKSHOP and weekday >= 5:
        shape = WORKSHOP_WEEKEND
    hour, into = divmod(minute_of_day, 60)
    a, b = shape[hour], shape[(hour + 1) % 24]
    base60 = a * 60 + (b - a) * into
    noise = 700 + mix64(key, minute, 2) % 601  # 0.7x .. 1.3x, per minute
    return round_div(base60 * scale_permille * noise, 60 * 1000 * 1000)


@dataclass(frozen=True, slots=True)
class Instant:
    """What the meter measures at one moment, in integer register-friendly units."""

    power_w: int  # signed: negative under reverse tamper
    voltage_dv: int  # 0.1 V
    current_ma: int
    power_factor_milli: int
    frequency_chz: int  # 0.01 Hz


def measure(customer_class: CustomerClass, key: int, minute: int, p: int) -> Instant:
    """What the meter reads in ``minute`` with ``p`` W through it (signed)."""
    v = 2300 + mix64(key, minute, 3) % 41 - 20 - round_div(abs(p) * 15, 1000)
    f = 5000 + mix64(key, minute, 4) % 11 - 5
    if p == 0:
        return Instant(0, v, 0, 1000, f)
    pf = BASE_POWER_FACTOR[customer_class] + mix64(key, minute, 5) % 41 - 20
    current = round_div(abs(p) * 10_000_000, v * pf)
    return Instant(p, v, current, pf, f)
