"""A meter's state as the store writes it at every reading (``ledgers.state_json``).

The row is made from the fields of ``MeterState`` and of the dataclasses it holds, found
with ``dataclasses.fields`` and their type hints when this module loads: a field added to
the state is written and read back with no change here, and a field of a type that has no
row form below stops the import with a TypeError rather than being dropped. The settings
are stored apart (``meters.settings_json``, written only when they change).

The row is JSON: a dataclass is an object of its fields in order, except in a tuple of
dataclasses (the spend samples), where each is an array of its fields in order; times are
integer microseconds since 1970 UTC, dates ISO 8601, fractions and decimals strings, enums
their values, sets arrays. It is formatted into a template made from the fields: pydantic's
dump was a third of a 10,000-meter durable commit, and a plain structure through
``json`` (with its twelve spend samples) about half again as slow as the template. The
price of not listing the fields by hand: a row takes 1.37 times the instructions of the
f-string that did (77,000 against 56,000, callgrind), 3 to 4 µs more a row on the 2-core
reference box, about 35 ms a 10,000-reading cycle (docs/benchmarks.md). Rows in pydantic's
form (stores before schema 4) load as they are: reading turns the compact forms back
(microseconds to times, arrays to objects) and pydantic checks the result.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import operator
import types
import typing
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from operator import attrgetter
from typing import Any

from gateway.core.meter_state import MeterState
from gateway.core.settings import MeterSettings
from gateway.forms import SettingsError, ledger_json, state_from_json

#: Stored apart from the row.
_APART = frozenset({"settings"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_quote = json.JSONEncoder(ensure_ascii=False).encode
_LITERALS = {True: "true", False: "false", None: "null"}
#: ``str(v)`` in double quotes, for values whose text has no character JSON escapes
_IN_QUOTES = '"%s"'.__mod__

#: A field's value -> its text in the row (or an int, which ``%s`` writes as it is).
Text = Callable[[Any], object]


def _micros(at: datetime) -> int:
    """Microseconds since 1970 UTC; TypeError for a time without a zone."""
    return (at - _EPOCH) // _US


def _is_dataclass(hint: object) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _optional(hint: object) -> object | None:
    """X of ``X | None``; None for any other hint."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        arms = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(arms) == 1 and len(typing.get_args(hint)) == 2:
            arm: object = arms[0]
            return arm
    return None


def _item(hint: object) -> object | None:
    """X of ``tuple[X, ...]``, ``frozenset[X]``, ``set[X]`` or ``list[X]``; else None."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    item: object = args[0] if args else None
    if origin in (frozenset, set, list) and len(args) == 1:
        return item
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return item
    return None


def _text_of(hint: object, where: str) -> Text:
    """How a value of type ``hint`` is written."""
    if hint is int:
        return operator.index  # the int itself
    if hint is bool:
        return _LITERALS.__getitem__
    if hint is str:
        return _quote
    if hint is datetime:
        return _micros
    if hint in (date, Fraction, Decimal):
        return _IN_QUOTES  # str() of a date is ISO 8601
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {m: _quote(m.value) for m in hint}.__getitem__
    if _is_dataclass(hint):  # one inside an array (in an object, its fields are inlined)
        return _Form(typing.cast(type, hint)).text
    if (inner := _optional(hint)) is not None:
        text = _text_of(inner, where)
        if text is _LITERALS.__getitem__:  # None is in it
            return text
        return lambda v: "null" if v is None else text(v)
    if (item := _item(hint)) is not None:
        if _is_dataclass(item):
            return _Rows(typing.cast(type, item))
        each = str if item is int else _text_of(item, where)
        return lambda v: "[" + ",".join(map(each, v)) + "]"  # type: ignore[arg-type]
    raise TypeError(f"the store has no row form for {where}: {hint}")


class _Form:
    """How one dataclass is written: a ``%`` template of its fields in order (those of a
    dataclass field inlined, read through dotted names) and each field's text. (``%`` is
    about twice as fast as ``str.format`` on a template of this size.)"""

    def __init__(
        self, cls: type, *, apart: frozenset[str] = frozenset(), positional: bool = False
    ) -> None:
        self.paths: list[str] = []
        texts: list[Text] = []
        self.template = self._fragment(cls, "", apart, positional, texts)
        self.texts = tuple(texts)
        get = attrgetter(*self.paths)
        self.values: Callable[[Any], tuple[Any, ...]] = (
            get if len(self.paths) > 1 else lambda v: (get(v),)
        )

    def _fragment(
        self, cls: type, prefix: str, apart: frozenset[str], positional: bool, texts: list[Text]
    ) -> str:
        hints = typing.get_type_hints(cls)
        slots = []
        for f in dataclasses.fields(cls):
            if f.name in apart:
                continue
            hint = hints[f.name]
            if _is_dataclass(hint) and not positional:
                slot = self._fragment(
                    typing.cast(type, hint), f"{prefix}{f.name}.", apart, False, texts
                )
            else:
                texts.append(_text_of(hint, f"{cls.__name__}.{f.name}"))
                self.paths.append(prefix + f.name)
                slot = "%s"
            slots.append(slot if positional else f'"{f.name}":{slot}')
        if not slots:
            raise TypeError(f"the store has no row form for {cls.__name__}: no fields")
        return f"[{','.join(slots)}]" if positional else f"{{{','.join(slots)}}}"

    def text(self, value: Any) -> str:
        return self.template % tuple(map(operator.call, self.texts, self.values(value)))


class _Rows:
    """The text of a tuple of dataclasses: an array of arrays."""

    def __init__(self, cls: type) -> None:
        self.item = _Form(cls, positional=True).text

    def __call__(self, items: tuple[Any, ...]) -> str:
        return "[" + ",".join([self.item(x) for x in items]) + "]"


_STATE = _Form(MeterState, apart=_APART)
#: the state's tuples of dataclasses (the spend samples): written by ``StateRows`` with a
#: memo per meter, passed through ``tuple`` (which returns a tuple as it is) until then
_SLIDING = tuple((i, text) for i, text in enumerate(_STATE.texts) if isinstance(text, _Rows))
_STATE.texts = tuple(tuple if isinstance(text, _Rows) else text for text in _STATE.texts)


class StateRows:
    """Writes ``state_json``. A tuple of dataclasses a meter keeps (its spend samples)
    slides by one per reading, so the text of each item is kept with the meter's last row
    and only the new ones are formatted (formatting the twelve was most of a row's cost).
    Used by one thread (the store's writer)."""

    def __init__(self) -> None:
        self._memo: dict[tuple[str, int], tuple[tuple[Any, ...], list[str]]] = {}

    def row(self, state: MeterState) -> str:
        """``state`` without its settings (stored apart, written only when they change)."""
        try:
            values: list[Any] = list(map(operator.call, _STATE.texts, _STATE.values(state)))
            for i, rows in _SLIDING:
                texts = self._item_texts((state.meter_id, i), values[i], rows)
                values[i] = "[" + ",".join(texts) + "]"
        except TypeError:  # a time without a zone: pydantic's form keeps it as it is
            self.forget(state.meter_id)
            return ledger_json(state)
        return _STATE.template % tuple(values)

    def forget(self, meter_id: str) -> None:
        for i, _rows in _SLIDING:
            self._memo.pop((meter_id, i), None)

    def _item_texts(self, key: tuple[str, int], items: tuple[Any, ...], rows: _Rows) -> list[str]:
        """The texts of ``items``, reusing those of the meter's last row when the new
        tuple starts with the tail of the old one (equal items have the same text)."""
        last = self._memo.get(key)
        texts: list[str] | None = None
        if last is not None and items:
            old, old_texts = last
            first = items[0]
            for k, item in enumerate(old):
                if item is first:
                    kept = len(old) - k
                    if items[:kept] == old[k:]:
                        texts = old_texts[k:] + list(map(rows.item, items[kept:]))
                    break
        if texts is None:
            texts = list(map(rows.item, items))
        self._memo[key] = (items, texts)
        return texts


# ---------------------------------------------------------------------- reading a row
Undo = Callable[[Any], Any]


def _time(value: object) -> object:
    """Microseconds since 1970 UTC to a time; anything else to pydantic as it is."""
    if type(value) is int:
        try:
            return _EPOCH + value * _US
        except OverflowError as exc:
            raise SettingsError("meter state", f"time out of range: {value} µs") from exc
    return value


def _undo_of(hint: object) -> Undo | None:
    """What turns a stored value of type ``hint`` back into pydantic's input (None: it is
    already). Every one passes what it does not recognise on, for pydantic to judge."""
    hint = _optional(hint) or hint
    if hint is datetime:
        return _time
    if _is_dataclass(hint):
        return _undo_object(typing.cast(type, hint))
    if (item := _item(hint)) is not None and _is_dataclass(item):
        cls = typing.cast(type, item)
        names = tuple(f.name for f in dataclasses.fields(cls))
        undo = _undo_object(cls)

        def rows(value: Any) -> Any:
            if not isinstance(value, list):
                return value
            return [
                undo(dict(zip(names, x, strict=False)))
                if isinstance(x, list) and len(x) <= len(names)
                else x
                for x in value
            ]

        return rows
    return None


def _undo_object(cls: type, apart: frozenset[str] = frozenset()) -> Undo:
    hints = typing.get_type_hints(cls)
    undos = tuple(
        (f.name, undo)
        for f in dataclasses.fields(cls)
        if f.name not in apart and (undo := _undo_of(hints[f.name])) is not None
    )

    def obj(value: Any) -> Any:
        if isinstance(value, dict):
            for name, undo in undos:
                if name in value:
                    value[name] = undo(value[name])
        return value

    return obj


_UNDO_STATE = _undo_object(MeterState, _APART)


def state_from_row(text: str | bytes, settings: MeterSettings) -> MeterState:
    """The state ``StateRows`` wrote (or pydantic's form of it) with ``settings``.
    Raises ``SettingsError`` if it does not describe a valid state."""
    try:
        body: Any = json.loads(text)
    except ValueError as exc:
        raise SettingsError("meter state", f"not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise SettingsError("meter state", "not a JSON object")
    body = _UNDO_STATE(body)
    body["settings"] = settings
    return state_from_json(body)
