"""Every event the provisioning CLI queues for the headend is named in docs/mqtt.md, where integrators look them up."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioning.events import PROVISIONING_EVENTS

MQTT_DOC = Path(__file__).resolve().parents[2] / "docs" / "mqtt.md"


@pytest.mark.parametrize("event", PROVISIONING_EVENTS)
def test_the_event_is_documented(event: str) -> None:
    assert f"`{event}`" in MQTT_DOC.read_text(encoding="utf-8")
