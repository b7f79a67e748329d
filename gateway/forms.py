"""JSON forms of tariffs, settings and meter state, for provisioning, the MQTT tariff
update and the store. pydantic validates the core's frozen dataclasses directly, so there
is one definition of each shape; the dataclasses' own checks run on load. (The shell's:
the core imports no pydantic.)"""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import JsonValue, TypeAdapter, ValidationError

from gateway.core.meter_state import MeterState
from gateway.core.settings import MeterSettings
from gateway.core.tariff import Tariff
from gateway.errors import GatewayError

T = TypeVar("T")


class SettingsError(GatewayError, ValueError):
    """A tariff, settings or state document that does not describe a valid one."""

    def __init__(self, what: str, problem: str) -> None:
        super().__init__(f"invalid {what}: {problem}")
        self.what = what
        self.problem = problem


class _Form(Generic[T]):
    """The JSON form of one of the core's dataclasses (``what`` names it in errors)."""

    def __init__(self, cls: type[T], what: str) -> None:
        self.adapter = TypeAdapter(cls)
        self.what = what

    def load(self, data: object) -> T:
        """The value ``data`` describes; ``SettingsError`` if it describes none."""
        try:
            return self.adapter.validate_python(data)
        except (ValidationError, ValueError, TypeError) as exc:
            raise SettingsError(self.what, str(exc)) from exc

    def dump(self, value: T) -> dict[str, JsonValue]:
        result: dict[str, JsonValue] = self.adapter.dump_python(value, mode="json")
        return result


_TARIFF = _Form(Tariff, "tariff")
_SETTINGS = _Form(MeterSettings, "meter settings")
_STATE = _Form(MeterState, "meter state")

tariff_from_json = _TARIFF.load
settings_from_json = _SETTINGS.load
settings_to_json = _SETTINGS.dump
state_from_json = _STATE.load
state_to_json = _STATE.dump


def ledger_json(state: MeterState) -> str:
    """The state without its settings (stored apart, written only when they change)."""
    return _STATE.adapter.dump_json(state, exclude={"settings"}).decode()
