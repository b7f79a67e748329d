"""A meter's state as the store writes it at every reading (``ledgers.state_json``).

The JSON of ``json_forms.ledger_json`` (the state without its settings) with its times as
integer microseconds since 1970 UTC and each spend sample as ``[at, charged]``, written
by hand: pydantic's dump was a third of a 10,000-meter durable commit, and Python's own
``datetime.isoformat`` of an aware time costs more than the rest of a row. Rows in
pydantic's form (stores before schema 4) load as they are.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring as _string
from typing import Any

from gateway.core.driver import MeterState
from gateway.core.forecast import SpendSample
from gateway.core.json_forms import SettingsError, ledger_json, state_from_json
from gateway.core.settings import MeterSettings

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_BOOL = {True: "true", False: "false", None: "null"}


def _micros(at: datetime) -> int:
    """Microseconds since 1970 UTC; TypeError for a time without a zone."""
    return (at - _EPOCH) // _US


class StateRows:
    """Writes ``state_json``. The spend samples a meter keeps slide by one per reading, so
    the text of each is kept with the meter's last row and only the new one is formatted
    (formatting the twelve was most of a row's cost). Used by one thread (the store's
    writer)."""

    def __init__(self) -> None:
        self._spend: dict[str, tuple[tuple[SpendSample, ...], list[str]]] = {}

    def _spend_texts(self, meter_id: str, spend: tuple[SpendSample, ...]) -> list[str]:
        last = self._spend.get(meter_id)
        texts: list[str] | None = None
        if last is not None and spend:
            old, old_texts = last
            first = spend[0]
            for k, sample in enumerate(old):
                if sample is first:
                    kept = len(old) - k
                    if kept <= len(spend) and all(spend[i] is old[k + i] for i in range(1, kept)):
                        texts = old_texts[k:]
                        texts.extend(f"[{_micros(s.at)},{s.charged}]" for s in spend[kept:])
                    break
        if texts is None:
            texts = [f"[{_micros(s.at)},{s.charged}]" for s in spend]
        self._spend[meter_id] = (spend, texts)
        return texts

    def forget(self, meter_id: str) -> None:
        self._spend.pop(meter_id, None)

    def row(self, state: MeterState) -> str:
        """``state`` without its settings (stored apart, written only when they change)."""
        ledger = state.ledger
        read_at, paid = ledger.read_at, ledger.standing_paid_through
        try:
            at = "null" if read_at is None else str(_micros(read_at))
            spend = ",".join(self._spend_texts(state.meter_id, state.spend))
        except TypeError:  # a time without a zone: pydantic's form keeps it as it is
            self.forget(state.meter_id)
            return ledger_json(state)
        register = ledger.register_wh
        tier = ledger.tier
        return (
            f'{{"meter_id":{_string(state.meter_id)},"ledger":{{"balance":{ledger.balance},'
            f'"debt":{ledger.debt},"register_wh":{"null" if register is None else register},'
            f'"read_at":{at},"unbilled":"{ledger.unbilled}","held_wh":{ledger.held_wh},'
            f'"tier":{{"period":{_string(tier.period)},"used_wh":{tier.used_wh}}},'
            f'"standing_paid_through":{"null" if paid is None else _string(paid.isoformat())},'
            f'"opening_balance":{ledger.opening_balance},"topups":{ledger.topups},'
            f'"charged":{ledger.charged},"debt_recovered":{ledger.debt_recovered},'
            f'"standing_to_debt":{ledger.standing_to_debt}}},'
            f'"credit":{_string(str(state.credit))},"comm_ok":{_BOOL[state.comm_ok]},'
            f'"flags":[{",".join([_string(f) for f in state.flags])}],"spend":[{spend}],'
            f'"relay_observed":{_BOOL[state.relay_observed]},'
            f'"relay_mismatch_reported":{_BOOL[state.relay_mismatch_reported]},'
            f'"open_at_last_reading":{_BOOL[state.open_at_last_reading]}}}'
        )


def _time(value: object) -> object:
    """Microseconds since 1970 UTC to a time; anything else to pydantic as it is."""
    if type(value) is int:
        try:
            return _EPOCH + value * _US
        except OverflowError as exc:
            raise SettingsError("meter state", f"time out of range: {value} µs") from exc
    return value


def state_from_row(text: str | bytes, settings: MeterSettings) -> MeterState:
    """The state ``state_row`` wrote (or pydantic's form of it) with ``settings``.
    Raises ``SettingsError`` if it does not describe a valid state."""
    try:
        body: Any = json.loads(text)
    except ValueError as exc:
        raise SettingsError("meter state", f"not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise SettingsError("meter state", "not a JSON object")
    ledger = body.get("ledger")
    if isinstance(ledger, dict) and "read_at" in ledger:
        ledger["read_at"] = _time(ledger["read_at"])
    spend = body.get("spend")
    if isinstance(spend, list):
        body["spend"] = [
            {"at": _time(s[0]), "charged": s[1]} if isinstance(s, list) and len(s) == 2 else s
            for s in spend
        ]
    body["settings"] = settings
    return state_from_json(body)
