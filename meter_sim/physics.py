"""Meter physics, pure: energy, relay, tamper, load limit, lease, keypad and button.

A :class:`MeterModel` is stepped by :meth:`MeterModel.advance` with the simulated time;
it never reads a clock. Demand (and what the meter measures of it) comes from
:mod:`meter_sim.load_profile`, a deterministic function of (seed, unit, minute):
constant within each minute, so energy integrated over any sequence of advances is the
same exact integer (Wh plus a W*ms remainder, no float drift) whoever polls when. That
is what makes "same seed, same readings" hold, and idle meters cost nothing.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from meter_sim.errors import ControlError
from meter_sim.load_profile import (
    BASE_POWER_FACTOR,
    DAILY_SHAPE,
    WORKSHOP_WEEKEND,
    CustomerClass,
    Instant,
    customer_class_for,
    measure,
    mix64,
    profile_w,
    round_div,
)

__all__ = [  # with the load profile's names, which lived here first
    "BASE_POWER_FACTOR",
    "DAILY_SHAPE",
    "KEYPAD_DIGITS",
    "LOAD_LIMIT_DELAY_MS",
    "MS_PER_MINUTE",
    "WMS_PER_WH",
    "WORKSHOP_WEEKEND",
    "CustomerClass",
    "Instant",
    "MeterModel",
    "Tamper",
    "customer_class_for",
    "mix64",
    "round_div",
]

MS_PER_MINUTE = 60_000
WMS_PER_WH = 3_600_000  # watt-milliseconds in one watt-hour
LOAD_LIMIT_DELAY_MS = 10_000  # PE-1: above the limit for 10 s opens the relay
KEYPAD_DIGITS = 20


class Tamper(StrEnum):
    """Tampers a test or an operator can set on a meter."""

    COVER = "cover"  # terminal cover opened: status bit 1
    MAGNET = "magnet"  # magnetic field on the meter: status bit 2
    BYPASS = "bypass"  # load wired around the relay: consumption goes on with it open
    REVERSE = "reverse"  # meter wired backwards: energy counts as export, status bit 6


class MeterModel:
    """One simulated meter's whole state; every mutator takes ``now`` and advances first."""

    __slots__ = (
        "_demand",
        "_demand_minute",
        "_export_rem",
        "_import_rem",
        "_instant",
        "_instant_key",
        "_key",
        "_over_since_ms",
        "_scale_permille",
        "button_latched",
        "bypass",
        "cover_open",
        "customer_class",
        "energy_export_wh",
        "energy_import_wh",
        "keypad_ack",
        "keypad_digits",
        "keypad_pending",
        "keypad_seq",
        "lease_base_wh",
        "lease_tripped",
        "lease_wh",
        "load_limit_tripped",
        "load_limit_w",
        "load_override_w",
        "magnetic",
        "relay_closed",
        "reverse",
        "t_ms",
        "unit",
    )

    def __init__(
        self,
        unit: int,
        seed: int,
        now: float,
        customer_class: CustomerClass | None = None,
        energy_import_wh: int | None = None,
    ) -> None:
        self.unit = unit
        self.customer_class = customer_class or customer_class_for(seed, unit)
        self._key = mix64(seed, unit)
        self._scale_permille = 600 + self._key % 801  # this household: 0.6x .. 1.4x the class
        self.t_ms = _ms(now)
        start = mix64(self._key, 1) % 5_000_000 if energy_import_wh is None else energy_import_wh
        self.energy_import_wh = start
        self.energy_export_wh = 0
        self._import_rem = 0
        self._export_rem = 0
        self.relay_closed = True
        self.cover_open = False
        self.magnetic = False
        self.bypass = False
        self.reverse = False
        self.load_override_w: int | None = None
        self.load_limit_w = 0
        self._over_since_ms: int | None = None
        self.load_limit_tripped = False
        #: the credit lease: Wh the meter may deliver from ``lease_base_wh`` on (0: none)
        self.lease_wh = 0
        self.lease_base_wh = 0
        self.lease_tripped = False
        self.keypad_seq = 0
        self.keypad_digits = "0" * KEYPAD_DIGITS
        self.keypad_pending = False
        self.keypad_ack = 0
        self.button_latched = False
        self._demand_minute = -1
        self._demand = 0
        self._instant_key = (-1, 0)
        self._instant: Instant | None = None

    # ------------------------------------------------------------------ demand

    def demand_w(self, minute: int) -> int:
        """What the premises draw in this minute if supplied (the load, not the meter)."""
        if self.load_override_w is not None:
            return self.load_override_w
        if minute == self._demand_minute:
            return self._demand
        self._demand = self._profile_w(minute)
        self._demand_minute = minute
        return self._demand

    def _profile_w(self, minute: int) -> int:
        return profile_w(self.customer_class, self._key, self._scale_permille, minute)

    def metered_power_w(self, minute: int) -> int:
        """Power through the meter: none with the relay open unless bypassed; signed."""
        if not (self.relay_closed or self.bypass):
            return 0
        p = self.demand_w(minute)
        return -p if self.reverse else p

    # ------------------------------------------------------------------ time

    def advance(self, now: float) -> None:
        """Integrate energy up to ``now`` and apply the load-limit trip; time never goes back."""
        t_end = _ms(now)
        while self.t_ms < t_end:
            minute = self.t_ms // MS_PER_MINUTE
            seg_end = min(t_end, (minute + 1) * MS_PER_MINUTE)
            p = self.metered_power_w(minute)
            trip_at: int | None = None
            if self.load_limit_w > 0 and self.relay_closed and abs(p) > self.load_limit_w:
                if self._over_since_ms is None:
                    self._over_since_ms = self.t_ms
                trip_at = self._over_since_ms + LOAD_LIMIT_DELAY_MS
                seg_end = min(seg_end, max(trip_at, self.t_ms))
            else:
                self._over_since_ms = None
            lease_end = self._lease_end_ms(p)
            if lease_end is not None:
                seg_end = min(seg_end, max(lease_end, self.t_ms + 1))
            self._accumulate(p, seg_end - self.t_ms)
            self.t_ms = seg_end
            if trip_at is not None and self.t_ms >= trip_at:
                self.relay_closed = False
                self.load_limit_tripped = True
                self._over_since_ms = None
            if self._lease_used_up():
                self.relay_closed = False
                self.lease_tripped = True

    def _lease_left_wms(self) -> int:
        """Energy the lease still allows, in W·ms (exact, with the import remainder)."""
        left_wh = self.lease_base_wh + self.lease_wh - self.energy_import_wh
        return left_wh * WMS_PER_WH - self._import_rem

    def _lease_used_up(self) -> bool:
        return (
            self.lease_wh > 0
            and self.relay_closed
            and not self.bypass
            and self._lease_left_wms() <= 0
        )

    def _lease_end_ms(self, power_w: int) -> int | None:
        """When the lease runs out at ``power_w`` through the relay (None: it does not)."""
        if self.lease_wh <= 0 or not self.relay_closed or self.bypass or power_w <= 0:
            return None
        return self.t_ms + -(-max(0, self._lease_left_wms()) // power_w)

    def _accumulate(self, power_w: int, dt_ms: int) -> None:
        if power_w >= 0:
            wh, self._import_rem = divmod(self._import_rem + power_w * dt_ms, WMS_PER_WH)
            self.energy_import_wh += wh
        else:
            wh, self._export_rem = divmod(self._export_rem - power_w * dt_ms, WMS_PER_WH)
            self.energy_export_wh += wh

    # ------------------------------------------------------------------ readings

    def instant(self) -> Instant:
        """Instantaneous values at the time last advanced to."""
        minute = self.t_ms // MS_PER_MINUTE
        p = self.metered_power_w(minute)
        key = (minute, p)
        if key == self._instant_key and self._instant is not None:
            return self._instant
        self._instant_key = key
        self._instant = measure(self.customer_class, self._key, minute, p)
        return self._instant

    def status_bits(self) -> int:
        """PE-1 status register (bits 0..7)."""
        return (
            int(self.relay_closed)
            | int(self.cover_open) << 1
            | int(self.magnetic) << 2
            | int(self.keypad_pending) << 3
            | int(self.button_latched) << 4
            | int(self.load_limit_tripped) << 5
            | int(self.reverse) << 6
            | int(self.lease_tripped) << 7
        )

    # ------------------------------------------------------------------ commands

    def set_relay(self, closed: bool, now: float) -> None:
        """The gateway's relay command; closing clears a load-limit trip."""
        self.advance(now)
        self.relay_closed = closed
        if closed:
            self.load_limit_tripped = False
        self._over_since_ms = None

    def set_lease(self, wh: int, now: float) -> None:
        """The gateway's credit lease: ``wh`` more Wh from now (0: no lease). A new grant
        closes a relay that the lease itself had opened."""
        self.advance(now)
        if not 0 <= wh <= 0xFFFF_FFFF:
            raise ControlError(f"lease {wh} Wh outside 0..4294967295")
        self.lease_wh = wh
        self.lease_base_wh = self.energy_import_wh
        if self.lease_tripped:
            self.lease_tripped = False
            if wh > 0:
                self.relay_closed = True

    def set_load_limit(self, watts: int, now: float) -> None:
        self.advance(now)
        if not 0 <= watts <= 0xFFFF:
            raise ControlError(f"load limit {watts} W outside 0..65535")
        self.load_limit_w = watts
        self._over_since_ms = None

    def set_tamper(self, tamper: Tamper, on: bool, now: float) -> None:
        self.advance(now)
        match tamper:
            case Tamper.COVER:
                self.cover_open = on
            case Tamper.MAGNET:
                self.magnetic = on
            case Tamper.BYPASS:
                self.bypass = on
            case Tamper.REVERSE:
                self.reverse = on

    def set_load(self, watts: int | None, now: float) -> None:
        """Fix the premises' demand at ``watts`` (None: back to the class profile)."""
        if watts is not None and not 0 <= watts <= 100_000:
            raise ControlError(f"load {watts} W outside 0..100000")
        self.advance(now)
        self.load_override_w = watts

    def enter_keypad(self, digits: str, now: float) -> int:
        """The customer typed a complete token: store it, bump the sequence, flag pending."""
        if len(digits) != KEYPAD_DIGITS or not (digits.isascii() and digits.isdigit()):
            raise ControlError(f"a keypad entry is exactly {KEYPAD_DIGITS} decimal digits")
        self.advance(now)
        self.keypad_digits = digits
        self.keypad_seq = (self.keypad_seq + 1) % 0x10000
        self.keypad_pending = True
        return self.keypad_seq

    def acknowledge_keypad(self, value: int, now: float) -> None:
        """The gateway wrote keypad_ack: pending clears when it names the current entry."""
        self.advance(now)
        self.keypad_ack = value
        if value == self.keypad_seq:
            self.keypad_pending = False

    def press_button(self, now: float) -> None:
        """Reconnect button: status bit 4 latches until a read of the status register."""
        self.advance(now)
        self.button_latched = True

    def replace_energy_register(self, now: float) -> None:
        """The meter was swapped: its counters start again from zero."""
        self.advance(now)
        self.energy_import_wh = self.energy_export_wh = 0
        self._import_rem = self._export_rem = 0

    def state(self) -> dict[str, Any]:
        """Everything about the meter, JSON-ready (for ``ctl state``)."""
        inst = self.instant()
        return {
            "unit": self.unit,
            "customer_class": str(self.customer_class),
            "time_ms": self.t_ms,
            "energy_import_wh": self.energy_import_wh,
            "energy_export_wh": self.energy_export_wh,
            "power_w": inst.power_w,
            "voltage_dv": inst.voltage_dv,
            "current_ma": inst.current_ma,
            "power_factor_milli": inst.power_factor_milli,
            "frequency_chz": inst.frequency_chz,
            "status": self.status_bits(),
            "relay_closed": self.relay_closed,
            "tampers": {
                "cover": self.cover_open,
                "magnet": self.magnetic,
                "bypass": self.bypass,
                "reverse": self.reverse,
            },
            "load_override_w": self.load_override_w,
            "load_limit_w": self.load_limit_w,
            "load_limit_tripped": self.load_limit_tripped,
            "lease_wh": self.lease_wh,
            "lease_left_wh": self.lease_base_wh + self.lease_wh - self.energy_import_wh
            if self.lease_wh
            else None,
            "lease_tripped": self.lease_tripped,
            "keypad_seq": self.keypad_seq,
            "keypad_digits": self.keypad_digits,
            "keypad_pending": self.keypad_pending,
            "keypad_ack": self.keypad_ack,
            "button_latched": self.button_latched,
        }


def _ms(now: float) -> int:
    return int(now * 1000)
