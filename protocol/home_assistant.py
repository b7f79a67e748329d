"""Home Assistant MQTT discovery for our meters: an energy sensor, the balance and the relay.

A mini-grid operator who already runs Home Assistant sees each meter appear in its
dashboards (and in the Energy panel) without configuration. The configs point at the
gateway's own topics and pick fields out of our JSON with value templates, so nothing is
published twice. Format: Home Assistant's "MQTT discovery" (topic
``<prefix>/<component>/<node_id>/<object_id>/config``, retained).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from protocol.mqtt import Topics

DEFAULT_PREFIX = "homeassistant"
#: A sensor for each measured field a reading may carry (``protocol.messages.MEASURED``),
#: and for the voltage: field -> (object id suffix, name, unit, Home Assistant device class).
MEASURED_SENSORS: dict[str, tuple[str, str, str, str]] = {
    "voltage_v": ("voltage", "Voltage", "V", "voltage"),
    "voltage_l2_v": ("voltage_l2", "Voltage L2", "V", "voltage"),
    "voltage_l3_v": ("voltage_l3", "Voltage L3", "V", "voltage"),
    "current_a": ("current", "Current", "A", "current"),
    "current_l2_a": ("current_l2", "Current L2", "A", "current"),
    "current_l3_a": ("current_l3", "Current L3", "A", "current"),
    "power_l1_w": ("power_l1", "Power L1", "W", "power"),
    "power_l2_w": ("power_l2", "Power L2", "W", "power"),
    "power_l3_w": ("power_l3", "Power L3", "W", "power"),
    "power_factor": ("power_factor", "Power factor", "", "power_factor"),
    "frequency_hz": ("frequency", "Frequency", "Hz", "frequency"),
    "energy_export_wh": ("energy_export", "Energy exported", "kWh", "energy"),
}


def _device(gateway_id: str, meter_id: str, model: str) -> dict[str, Any]:
    return {
        "identifiers": [f"prepaid_edge_{gateway_id}_{meter_id}"],
        "name": f"Meter {meter_id}",
        "manufacturer": "prepaid-edge",
        "model": model,
        "via_device": f"prepaid_edge_{gateway_id}",
    }


def _object_id(meter_id: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in meter_id).lower()


def discovery_messages(
    topics: Topics,
    meter_id: str,
    *,
    currency: str,
    minor_units: int = 2,
    model: str = "PE-1",
    prefix: str = DEFAULT_PREFIX,
    measured: Iterable[str] = (),
) -> list[tuple[str, dict[str, Any]]]:
    """(topic, config) pairs to publish retained for one meter: energy, power, balance and
    supply, then a sensor for each ``measured`` field its readings carry."""
    gw = topics.gateway_id
    node = f"prepaid_edge_{_object_id(gw)}"
    obj = _object_id(meter_id)
    device = _device(gw, meter_id, model)
    availability = {
        "topic": topics.status,
        "value_template": "{{ value_json.state }}",
        "payload_available": "online",
        "payload_not_available": "offline",
    }
    scale = 10**minor_units
    sensors: list[tuple[str, dict[str, Any]]] = []
    for field in measured:
        if field not in MEASURED_SENSORS:
            continue
        key, name, unit, device_class = MEASURED_SENSORS[field]
        config: dict[str, Any] = {
            "name": name,
            "unique_id": f"{node}_{obj}_{key}",
            "state_topic": topics.meter(meter_id, "reading"),
            "value_template": f"{{{{ value_json.{field} }}}}",
            "device_class": device_class,
            "state_class": "measurement",
            "availability": [availability],
            "device": device,
        }
        if unit:
            config["unit_of_measurement"] = unit
        if field == "energy_export_wh":  # a counter in kWh, as the import's sensor
            config["value_template"] = f"{{{{ (value_json.{field} / 1000) | round(3) }}}}"
            config["state_class"] = "total_increasing"
        sensors.append((f"{prefix}/sensor/{node}/{obj}_{key}/config", config))
    fixed: list[tuple[str, dict[str, Any]]] = [
        (
            f"{prefix}/sensor/{node}/{obj}_energy/config",
            {
                "name": "Energy",
                "unique_id": f"{node}_{obj}_energy",
                "state_topic": topics.meter(meter_id, "reading"),
                "value_template": "{{ (value_json.energy_import_wh / 1000) | round(3) }}",
                "unit_of_measurement": "kWh",
                "device_class": "energy",
                "state_class": "total_increasing",
                "availability": [availability],
                "device": device,
            },
        ),
        (
            f"{prefix}/sensor/{node}/{obj}_power/config",
            {
                "name": "Power",
                "unique_id": f"{node}_{obj}_power",
                "state_topic": topics.meter(meter_id, "reading"),
                "value_template": "{{ value_json.power_w }}",
                "unit_of_measurement": "W",
                "device_class": "power",
                "state_class": "measurement",
                "availability": [availability],
                "device": device,
            },
        ),
        (
            f"{prefix}/sensor/{node}/{obj}_balance/config",
            {
                "name": "Credit balance",
                "unique_id": f"{node}_{obj}_balance",
                "state_topic": topics.meter(meter_id, "balance"),
                "value_template": f"{{{{ value_json.balance / {scale} }}}}",
                "unit_of_measurement": currency,
                "device_class": "monetary",
                "state_class": "total",
                "json_attributes_topic": topics.meter(meter_id, "balance"),
                "availability": [availability],
                "device": device,
            },
        ),
        (
            f"{prefix}/binary_sensor/{node}/{obj}_relay/config",
            {
                "name": "Supply",
                "unique_id": f"{node}_{obj}_relay",
                "state_topic": topics.meter(meter_id, "balance"),
                "value_template": "{{ 'ON' if value_json.relay == 'closed' else 'OFF' }}",
                "device_class": "power",
                "availability": [availability],
                "device": device,
            },
        ),
    ]
    return [*fixed, *sensors]
