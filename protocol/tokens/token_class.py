"""The six token classes and the range of the value each one carries, for both channels."""

from __future__ import annotations

from enum import IntEnum

#: Credit is 0.01 to 100,000.00 currency units (in minor units of a two-decimal currency).
MIN_CREDIT_MINOR = 1
MAX_CREDIT_MINOR = 10_000_000
#: Management values travel in 13 bits on the keypad.
MAX_MANAGEMENT_VALUE = 8191
#: The keypad carries the maximum power in steps of 10 W.
MAX_POWER_STEP_W = 10


class TokenClass(IntEnum):
    """The number is the class code of the online token (one byte)."""

    CREDIT = 0
    SET_MAX_POWER = 1
    CLEAR_TAMPER = 2
    SET_EMERGENCY_CREDIT = 3
    KEY_CHANGE = 4
    TEST = 5

    @property
    def cli_name(self) -> str:
        return self.name.lower().replace("_", "-")


#: The flags a clear-tamper token's mask names, bit 0 first (a mask of 0 clears them all).
TAMPER_MASK_FLAGS = ("cover_open", "magnetic_tamper", "load_limit_tripped", "reverse_energy")


def tamper_flags_of_mask(mask: int) -> tuple[str, ...]:
    """The flags a clear-tamper mask names: bit ``i`` is ``TAMPER_MASK_FLAGS[i]``, 0 all."""
    if mask == 0:
        return TAMPER_MASK_FLAGS
    return tuple(name for i, name in enumerate(TAMPER_MASK_FLAGS) if mask >> i & 1)


#: Inclusive range of the typed value of each class: minor units for credit and emergency
#: credit, W for maximum power (0 = no limit), a tamper-flag mask (0 = all), the new key
#: epoch for a key change (it must also be above the current epoch), a test code.
VALUE_RANGES: dict[TokenClass, tuple[int, int]] = {
    TokenClass.CREDIT: (MIN_CREDIT_MINOR, MAX_CREDIT_MINOR),
    TokenClass.SET_MAX_POWER: (0, MAX_MANAGEMENT_VALUE * MAX_POWER_STEP_W),
    TokenClass.CLEAR_TAMPER: (0, MAX_MANAGEMENT_VALUE),
    TokenClass.SET_EMERGENCY_CREDIT: (0, MAX_MANAGEMENT_VALUE),
    TokenClass.KEY_CHANGE: (1, MAX_MANAGEMENT_VALUE),
    TokenClass.TEST: (0, MAX_MANAGEMENT_VALUE),
}


def value_in_range(token_class: TokenClass, value: int, current_epoch: int) -> bool:
    """True when ``value`` is a valid value for ``token_class`` on a meter at ``current_epoch``."""
    low, high = VALUE_RANGES[token_class]
    if token_class is TokenClass.KEY_CHANGE:
        low = current_epoch + 1
    return low <= value <= high
