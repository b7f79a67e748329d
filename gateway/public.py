"""The gateway as the provisioning CLI sees it: the one surface it may import.

Four rooms: the site's config; the store with its lock and private files; the meter model
a store row holds (state, settings, tariffs, their JSON forms, a queued message); and the
meter I/O facade (ports, drivers and relays for Modbus and DL/T 645) that scan and
commission speak through. Everything else in ``gateway`` is the gateway's own and may
move; ``tests/unit/test_public_surface.py`` fails when provisioning reaches past this.
"""

from __future__ import annotations

from gateway.actuator import RelayTarget, parse_relay_output
from gateway.config import ConfigError, GatewayConfig, RtuBus, TcpBus, load_config, parse_config
from gateway.core.commands import Publish
from gateway.core.meter_state import MeterState, enrol
from gateway.core.settings import MeterSettings
from gateway.core.tariff import FlatPricing, Tariff, TariffSchedule
from gateway.dlt645_bus import dlt645_port_for
from gateway.dlt645_io import (
    ESAM,
    ESAM_REASON,
    NO_CONTROL_REASON,
    Dlt645Credentials,
    Dlt645MeterIO,
    command_deadline,
    control_secret,
    parse_control_secret,
)
from gateway.dlt645_port import Dlt645Port
from gateway.forms import (
    SettingsError,
    settings_from_json,
    settings_to_json,
    state_from_json,
    state_to_json,
)
from gateway.meter_io import MeterIO, MeterSnapshot, energy_wh
from gateway.modbus_port import IOFailure, MeterIOError, ModbusPort, RtuPort, TcpPort
from gateway.private_files import PRIVATE_DIR, PRIVATE_FILE, make_private_dir
from gateway.store import MeterRecord, Store, StoredMeter, StoreError, TokenWindow
from gateway.store_lock import StoreLock, StoreLockedError, StoreLockError, holder

__all__ = [  # the rooms are in the module's docstring and its import order
    "ESAM",
    "ESAM_REASON",
    "NO_CONTROL_REASON",
    "PRIVATE_DIR",
    "PRIVATE_FILE",
    "ConfigError",
    "Dlt645Credentials",
    "Dlt645MeterIO",
    "Dlt645Port",
    "FlatPricing",
    "GatewayConfig",
    "IOFailure",
    "MeterIO",
    "MeterIOError",
    "MeterRecord",
    "MeterSettings",
    "MeterSnapshot",
    "MeterState",
    "ModbusPort",
    "Publish",
    "RelayTarget",
    "RtuBus",
    "RtuPort",
    "SettingsError",
    "Store",
    "StoreError",
    "StoreLock",
    "StoreLockError",
    "StoreLockedError",
    "StoredMeter",
    "Tariff",
    "TariffSchedule",
    "TcpBus",
    "TcpPort",
    "TokenWindow",
    "command_deadline",
    "control_secret",
    "dlt645_port_for",
    "energy_wh",
    "enrol",
    "holder",
    "load_config",
    "make_private_dir",
    "parse_config",
    "parse_control_secret",
    "parse_relay_output",
    "settings_from_json",
    "settings_to_json",
    "state_from_json",
    "state_to_json",
]
