"""JSON forms of tariffs, settings and meter state, for provisioning, the MQTT tariff
update and the store. pydantic validates the core's frozen dataclasses directly, so there
is one definition of each shape; the dataclasses' own checks run on load. (The shell's:
the core imports no pydantic.)"""

from __future__ import annotations

from typing import Any

from pydantic import JsonValue, TypeAdapter, ValidationError

from gateway.core.meter_state import MeterState
from gateway.core.settings import MeterSettings
from gateway.core.tariff import Tariff
from gateway.errors import GatewayError

_TARIFF = TypeAdapter(Tariff)
_SETTINGS = TypeAdapter(MeterSettings)
_STATE = TypeAdapter(MeterState)


class SettingsError(GatewayError, ValueError):
    """A tariff, settings or state document that does not describe a valid one."""

    def __init__(self, what: str, problem: str) -> None:
        super().__init__(f"invalid {what}: {problem}")
        self.what = what
        self.problem = problem


def _load(adapter: TypeAdapter[Any], what: str, data: object) -> Any:
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        raise SettingsError(what, str(exc)) from exc
    except (ValueError, TypeError) as exc:
        raise SettingsError(what, str(exc)) from exc


def tariff_from_json(data: object) -> Tariff:
    result: Tariff = _load(_TARIFF, "tariff", data)
    return result


def tariff_to_json(tariff: Tariff) -> dict[str, JsonValue]:
    result: dict[str, JsonValue] = _TARIFF.dump_python(tariff, mode="json")
    return result


def settings_from_json(data: object) -> MeterSettings:
    result: MeterSettings = _load(_SETTINGS, "meter settings", data)
    return result


def settings_to_json(settings: MeterSettings) -> dict[str, JsonValue]:
    result: dict[str, JsonValue] = _SETTINGS.dump_python(settings, mode="json")
    return result


def state_from_json(data: object) -> MeterState:
    result: MeterState = _load(_STATE, "meter state", data)
    return result


def state_to_json(state: MeterState) -> dict[str, JsonValue]:
    result: dict[str, JsonValue] = _STATE.dump_python(state, mode="json")
    return result


def ledger_json(state: MeterState) -> str:
    """The state without its settings (stored apart, written only when they change)."""
    return _STATE.dump_json(state, exclude={"settings"}).decode()
