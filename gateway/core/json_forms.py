"""Old home of ``gateway.forms`` (the shell's: it needs pydantic), for callers not yet
moved. Nothing in the core imports it; remove once nothing else does."""

from gateway.forms import (
    SettingsError,
    ledger_json,
    settings_from_json,
    settings_to_json,
    state_from_json,
    state_to_json,
    tariff_from_json,
    tariff_to_json,
)

__all__ = [
    "SettingsError",
    "ledger_json",
    "settings_from_json",
    "settings_to_json",
    "state_from_json",
    "state_to_json",
    "tariff_from_json",
    "tariff_to_json",
]
