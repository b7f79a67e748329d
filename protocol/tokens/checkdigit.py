"""Damm check digit: catches every single-digit error and every adjacent swap.

Chosen over Verhoeff because it needs one 10 x 10 table and no permutations, and over
Luhn because Luhn misses the 09 <-> 90 swap. The table is the totally anti-symmetric
quasigroup of order 10 from H. Michael Damm's 2004 thesis.
"""

from __future__ import annotations

DAMM_TABLE: tuple[tuple[int, ...], ...] = (
    (0, 3, 1, 7, 5, 9, 8, 6, 4, 2),
    (7, 0, 9, 2, 1, 5, 4, 8, 6, 3),
    (4, 2, 0, 6, 8, 7, 1, 3, 5, 9),
    (1, 7, 5, 0, 9, 8, 3, 4, 2, 6),
    (6, 1, 2, 3, 0, 4, 5, 9, 7, 8),
    (3, 6, 7, 4, 2, 0, 9, 5, 8, 1),
    (5, 8, 6, 9, 7, 2, 0, 1, 3, 4),
    (8, 9, 4, 5, 3, 6, 2, 0, 1, 7),
    (9, 4, 3, 8, 6, 1, 7, 2, 0, 5),
    (2, 5, 8, 1, 4, 3, 6, 7, 9, 0),
)
#: The table flattened and indexed by ``interim * 10 + ASCII code - 48``, for speed.
_FLAT = tuple(DAMM_TABLE[i // 10][i % 10] * 10 - 48 for i in range(100))


def _interim(digits: str) -> int:
    if not digits.isascii() or not digits.isdigit():
        raise ValueError(f"not a string of decimal digits: {digits!r}")
    index = -48
    for code in digits.encode():
        index = _FLAT[index + code]
    return (index + 48) // 10


def damm_check_digit(digits: str) -> str:
    """The digit to append to ``digits``."""
    return str(_interim(digits))


def damm_valid(digits_with_check: str) -> bool:
    """True when the last digit is the Damm check digit of the ones before it."""
    return _interim(digits_with_check) == 0
