"""The keypad's 16-bit amount field: a 2-bit decimal exponent and a 14-bit mantissa.

``minor units = mantissa * 10**exponent``: exact for every amount up to 16,383 minor
units (163.83), then in steps of 0.10 up to 1,638.30, 1.00 up to 16,383.00 and 10.00 up
to 163,830.00. The vending side rounds an amount down to what the field can carry
(:func:`round_down_to_keypad_amount`) and charges only that, so a customer never pays for
credit the token does not carry.
"""

from __future__ import annotations

MANTISSA_BITS = 14
MAX_MANTISSA = (1 << MANTISSA_BITS) - 1
MAX_EXPONENT = 3
_POWERS_OF_TEN = (1, 10, 100, 1000)
MAX_KEYPAD_AMOUNT = MAX_MANTISSA * _POWERS_OF_TEN[MAX_EXPONENT]


def decode_keypad_amount(field: int) -> int:
    """Minor units carried by a 16-bit amount field."""
    if not 0 <= field <= 0xFFFF:
        raise ValueError(f"amount field is 16 bits: {field}")
    return (field & MAX_MANTISSA) * _POWERS_OF_TEN[field >> MANTISSA_BITS]


def round_down_to_keypad_amount(minor: int) -> int:
    """The largest amount the keypad can carry that is not above ``minor``: the one
    rounding rule of the keypad channel."""
    if not 0 <= minor <= MAX_KEYPAD_AMOUNT:
        raise ValueError(f"amount must be 0..{MAX_KEYPAD_AMOUNT} minor units: {minor}")
    step = 1
    while minor // step > MAX_MANTISSA:
        step *= 10
    return minor - minor % step


def encode_keypad_amount(minor: int) -> int:
    """The 16-bit field for ``minor`` with the smallest exponent; ``ValueError`` unless the
    amount is exactly representable (round it first with :func:`round_down_to_keypad_amount`)."""
    if round_down_to_keypad_amount(minor) != minor:
        raise ValueError(f"{minor} minor units is not exact on the keypad; round it down first")
    exponent = 0
    while minor // _POWERS_OF_TEN[exponent] > MAX_MANTISSA:
        exponent += 1
    return (exponent << MANTISSA_BITS) | (minor // _POWERS_OF_TEN[exponent])
