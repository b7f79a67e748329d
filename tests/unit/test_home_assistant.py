"""Home Assistant discovery configs follow HA's MQTT discovery format and point at the gateway's own topics and fields."""

from __future__ import annotations

import re

from protocol.home_assistant import discovery_messages
from protocol.mqtt import Topics

TOPIC = re.compile(r"^homeassistant/(sensor|binary_sensor)/[a-zA-Z0-9_-]+/[a-zA-Z0-9_-]+/config$")


def test_energy_balance_power_and_relay_per_meter() -> None:
    msgs = dict(discovery_messages(Topics("gw-1"), "PE1-000042", currency="KES"))
    assert len(msgs) == 4
    for topic, config in msgs.items():
        assert TOPIC.match(topic), topic
        assert {"name", "unique_id", "state_topic", "value_template", "device"} <= set(config)
        assert config["state_topic"].startswith("prepaid/v1/gw-1/meters/PE1-000042/")
        assert config["availability"][0]["topic"] == "prepaid/v1/gw-1/status"
        assert config["device"]["identifiers"] == ["prepaid_edge_gw-1_PE1-000042"]
    energy = next(c for t, c in msgs.items() if t.endswith("_energy/config"))
    assert energy["device_class"] == "energy"
    assert energy["state_class"] == "total_increasing"
    assert energy["unit_of_measurement"] == "kWh"
    assert "energy_import_wh" in energy["value_template"]
    balance = next(c for t, c in msgs.items() if t.endswith("_balance/config"))
    assert balance["unit_of_measurement"] == "KES"
    assert balance["value_template"] == "{{ value_json.balance / 100 }}"
    assert len({c["unique_id"] for c in msgs.values()}) == 4
