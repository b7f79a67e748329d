"""Every JSON example in docs/mqtt.md validates against the published schema it names, so the integrators' page cannot drift from the contract."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from examples.headend import load_validators

DOC = Path(__file__).resolve().parents[2] / "docs" / "mqtt.md"
EXAMPLE = re.compile(r"<!-- schema: ([a-z-]+) -->\s*```json\n(.*?)```", re.DOTALL)
EXAMPLES = EXAMPLE.findall(DOC.read_text())


def test_the_page_has_examples_of_every_kind() -> None:
    assert {kind for kind, _ in EXAMPLES} == set(load_validators())


@pytest.mark.parametrize(("kind", "text"), EXAMPLES)
def test_example_matches_its_schema(kind: str, text: str) -> None:
    errors = [e.message for e in load_validators()[kind].iter_errors(json.loads(text))]
    assert errors == []
