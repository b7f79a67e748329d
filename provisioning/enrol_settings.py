"""A meter's settings as enrolment reads them from a CSV row or flags: money in currency
units (to minor units, rounded once, in ``protocol.currency``), thresholds, tariff and
window documents; each wrong field a :class:`FieldError` naming it."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.public import (
    FlatPricing,
    MeterSettings,
    SettingsError,
    Tariff,
    TariffSchedule,
    settings_from_json,
    settings_to_json,
)
from protocol.currency import (
    AmountError,
    currency_decimals,
    format_amount,
    parse_amount,
    parse_price,
)
from provisioning.errors import ProvisionError

#: Columns a CSV file may have; meter_id, bus, unit_id and key_file are required.
MONEY_SETTINGS = (
    "alarm1",
    "alarm2",
    "overdraft_limit",
    "reconnect_threshold",
    "max_balance",
    "window_debt_cap",
)
_SIGNED_MONEY = frozenset({"reconnect_threshold"})
_TRUE = {"true", "yes", "1", "y"}
_FALSE = {"false", "no", "0", "n", ""}


class FieldError(ProvisionError):
    """One field of one meter is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def field_int(fields: Mapping[str, str], name: str, default: int | None = None) -> int | None:
    text = fields.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise FieldError(name, f"{text!r} is not a whole number") from None


def money_field(fields: Mapping[str, str], name: str, decimals: int) -> int | None:
    """A money field typed in currency units (``50.00``) as minor units; None when empty."""
    text = fields.get(name, "").strip()
    if not text:
        return None
    try:
        return parse_amount(text, decimals, signed=name in _SIGNED_MONEY)
    except AmountError as exc:
        raise FieldError(name, str(exc)) from None


def field_bool(fields: Mapping[str, str], name: str) -> bool:
    text = fields.get(name, "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise FieldError(name, f"{text!r} is not true or false")


def read_document(path: Path, field: str) -> Any:
    """A JSON or TOML file (by its suffix) as plain data."""
    try:
        text = path.read_text(encoding="utf-8")
        return tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise FieldError(field, f"cannot read {path}: {exc}") from None
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise FieldError(field, f"{path} is not valid {path.suffix[1:] or 'JSON'}: {exc}") from None


def field_path(fields: Mapping[str, str], name: str, base: Path) -> Path | None:
    text = fields.get(name, "").strip()
    if not text:
        return None
    if "\x00" in text:
        raise FieldError(name, "a path cannot hold a NUL character")
    path = Path(text)
    return path if path.is_absolute() else base / path


def _schedule_currency(doc: Mapping[str, Any], field: str) -> str:
    """The currency of the tariff in force first in a settings document's schedule."""
    try:
        schedule = settings_from_json({"tariffs": doc["tariffs"]}).tariffs
    except SettingsError as exc:
        problem = exc.problem.splitlines()
        raise FieldError(field, " ".join(p.strip() for p in problem[:3])) from None
    return schedule.entries[0].tariff.currency


def build_settings(
    fields: Mapping[str, str],
    base: Path,
    currency: str,
    start: Mapping[str, Any] | None = None,
) -> MeterSettings:
    """Settings from ``start`` (an enrolled meter's, for an update), else a settings file
    or the defaults, then the tariff, windows and thresholds the fields name; the core's
    own checks run on the result. Money is in units of the tariff's currency (``currency``
    for a flat price without one of its own)."""
    settings_file = field_path(fields, "settings_file", base)
    doc: dict[str, Any]
    if settings_file is not None:
        loaded = read_document(settings_file, "settings_file")
        if not isinstance(loaded, dict):
            raise FieldError("settings_file", "must hold a table of settings")
        doc = dict(loaded)
    else:
        doc = dict(start or {})
    tariff_file = field_path(fields, "tariff_file", base)
    price = fields.get("price_per_kwh", "").strip()
    if tariff_file is not None and price:
        raise FieldError("price_per_kwh", "give a tariff_file or a price_per_kwh, not both")
    if tariff_file is not None:
        tariff = read_document(tariff_file, "tariff_file")
        doc["tariffs"] = {"entries": [{"activates_at": None, "tariff": tariff}]}
    elif price:
        cur = fields.get("currency", "").strip() or currency
        try:
            per_kwh = parse_price(price, currency_decimals(cur))
            flat = TariffSchedule.single(Tariff(currency=cur, energy=FlatPricing(per_kwh)))
        except AmountError as exc:
            field = "currency" if "ISO 4217" in str(exc) else "price_per_kwh"
            raise FieldError(field, str(exc)) from None
        except (ValueError, TypeError) as exc:
            raise FieldError("price_per_kwh", str(exc)) from None
        doc["tariffs"] = settings_to_json(MeterSettings(tariffs=flat))["tariffs"]
    if "tariffs" not in doc:
        raise FieldError("tariff_file", "a tariff is required: tariff_file or price_per_kwh")
    windows_file = field_path(fields, "windows_file", base)
    if windows_file is not None:
        doc["windows"] = read_document(windows_file, "windows_file")
    field = "settings_file" if settings_file else "tariff_file" if tariff_file else "settings"
    decimals = currency_decimals(_schedule_currency(doc, field))
    for name in MONEY_SETTINGS:
        value = money_field(fields, name, decimals)
        if value is not None:
            doc[name] = value
    if fields.get("reconnect_needs_button", "").strip():
        doc["reconnect_needs_button"] = field_bool(fields, "reconnect_needs_button")
    try:
        return settings_from_json(doc)
    except SettingsError as exc:
        problem = exc.problem.splitlines()
        raise FieldError(field, " ".join(p.strip() for p in problem[:3])) from None


def settings_currency(settings: MeterSettings) -> str:
    """The currency money of a meter is typed and shown in: its first tariff's."""
    return settings.tariffs.entries[0].tariff.currency


def money_text(minor: int, settings: MeterSettings) -> str:
    """``49.87 KES``: an amount of a meter's money as a person reads it."""
    currency = settings_currency(settings)
    return f"{format_amount(minor, currency_decimals(currency))} {currency}"
