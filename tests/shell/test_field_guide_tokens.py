"""The field guide shows keypad tokens as one real run printed them: each token printed once (a meter refuses a counter twice, so two vends never print the same digits), and each keypad line types the token printed just before it."""

from __future__ import annotations

from pathlib import Path

from tests.support.console_walk import TOKEN

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "field-guide.md"


def test_each_token_on_the_page_is_printed_once_and_typed_next() -> None:
    printed: list[str] = []
    typed: list[str] = []
    for line in GUIDE.read_text(encoding="utf-8").splitlines():
        tokens = TOKEN.findall(line)
        if line.startswith("$ ") and " keypad " in line:
            assert printed, f"a keypad line with no token printed before: {line}"
            assert tokens == printed[-1:], f"types another token than the one printed: {line}"
            typed += tokens
        else:
            printed += tokens
    assert len(typed) >= 4, typed  # commission's test token, the top-up, §11's tokens
    repeated = sorted({t for t in printed if printed.count(t) > 1})
    assert not repeated, f"printed more than once on the page: {repeated}"
