"""A meter's prepaid settings: credit thresholds, limits, windows, the register and tariffs."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.core.tariff import TariffSchedule
from gateway.core.windows import NoDisconnectWindows


@dataclass(frozen=True, slots=True)
class MeterSettings:
    """Thresholds in minor units, alarm1 > alarm2 > 0 and overdraft limit >= 0 (checked in
    ``__post_init__``; docs/field-guide.md lists them, docs/credit-states.md says what they move).

    ``overdraft_limit`` is the emergency credit: the balance may fall to ``-overdraft_limit``
    before the meter is exhausted; inside a no-disconnect window, to
    ``-(overdraft_limit + window_debt_cap)`` before it is disconnected all the same. A top-up reconnects when the balance then exceeds
    ``reconnect_threshold``; one that would lift it above ``max_balance`` is refused whole.
    """

    tariffs: TariffSchedule
    alarm1: int = 500
    alarm2: int = 200
    overdraft_limit: int = 500
    reconnect_threshold: int = 100
    max_balance: int = 1_000_000
    reconnect_needs_button: bool = False
    rated_power_w: int = 23_000
    register_width_bits: int = 64
    plausibility_margin_percent: int = 10
    windows: NoDisconnectWindows = field(default_factory=NoDisconnectWindows)
    #: how far below ``-overdraft_limit`` a no-disconnect window lets the balance fall
    #: before the meter is disconnected all the same (the window is friendly, not free)
    window_debt_cap: int = 2_000

    def __post_init__(self) -> None:
        if not self.alarm1 > self.alarm2 > 0:
            raise ValueError("thresholds need alarm1 > alarm2 > 0")
        if self.overdraft_limit < 0:
            raise ValueError("overdraft_limit must be >= 0")
        if self.reconnect_threshold < -self.overdraft_limit:
            raise ValueError("reconnect_threshold must be >= -overdraft_limit")
        if self.max_balance <= max(self.alarm1, self.reconnect_threshold):
            raise ValueError("max_balance must exceed alarm1 and reconnect_threshold")
        if self.rated_power_w <= 0:
            raise ValueError("rated_power_w must be > 0")
        if self.register_width_bits not in (16, 32, 48, 64):
            raise ValueError("register_width_bits must be 16, 32, 48 or 64")
        if self.window_debt_cap < 0:
            raise ValueError("window_debt_cap must be >= 0")
        if not 0 <= self.plausibility_margin_percent <= 1000:
            raise ValueError("plausibility_margin_percent must be within 0..1000")
