"""``quick_init`` gives a frozen dataclass an ``__init__`` with the same parameters, defaults, factories and result as the one ``dataclasses`` writes, and the class stays frozen; ``replacer`` is ``dataclasses.replace``, every other field copied."""

from __future__ import annotations

import inspect
from dataclasses import FrozenInstanceError, dataclass, field, replace
from typing import Any

import pytest

from gateway.core.commands import Publish, WriteDisplay
from gateway.core.events import ReadingReceived
from gateway.core.forecast import SpendSample
from gateway.core.frozen import quick_init, replacer
from gateway.core.ledger import Ledger
from gateway.core.meter_state import MeterState


@dataclass(frozen=True, slots=True)
class Plain:
    name: str
    count: int = 3
    tags: frozenset[str] = field(default_factory=frozenset)
    items: list[int] = field(default_factory=list)


@quick_init
@dataclass(frozen=True, slots=True)
class Quick:
    name: str
    count: int = 3
    tags: frozenset[str] = field(default_factory=frozenset)
    items: list[int] = field(default_factory=list)


def test_same_signature_and_values_as_the_dataclass_init() -> None:
    assert str(inspect.signature(Quick)) == str(inspect.signature(Plain))
    for args, kwargs in [
        (("a",), {}),
        (("a", 5), {"items": [1]}),
        ((), {"name": "b", "tags": {"x"}}),
    ]:
        quick, plain = Quick(*args, **kwargs), Plain(*args, **kwargs)  # type: ignore[arg-type]
        assert repr(quick).removeprefix("Quick") == repr(plain).removeprefix("Plain")
    assert Quick("a").items is not Quick("a").items  # a fresh list each time, as the factory says
    with pytest.raises(TypeError):
        Quick()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Quick("a", 1, frozenset(), [], 5)  # type: ignore[call-arg]


def test_still_frozen_and_hashable() -> None:
    quick = Quick("a", tags=frozenset({"t"}))
    with pytest.raises(FrozenInstanceError):
        quick.count = 4  # type: ignore[misc]
    assert Quick("a") == Quick("a")
    assert hash(Ledger(5)) == hash(Ledger(5))


@pytest.mark.parametrize(
    "cls", [Ledger, MeterState, SpendSample, ReadingReceived, Publish, WriteDisplay]
)
def test_the_hot_core_classes_use_it(cls: type) -> None:
    init = vars(cls)["__init__"]
    assert init.__code__.co_filename == "<string>"
    assert all(name.startswith("_set_") for name in init.__code__.co_names if "set" in name)


def test_refuses_what_it_cannot_copy() -> None:
    @dataclass(frozen=True, slots=True)
    class Checked:
        value: int

        def __post_init__(self) -> None:
            pass

    with pytest.raises(TypeError):
        quick_init(Checked)

    @dataclass(slots=True)
    class Mutable:
        value: int

    with pytest.raises(TypeError):
        quick_init(Mutable)


@pytest.mark.parametrize(
    "names", [("name",), ("count", "items"), ("items", "tags", "count", "name")]
)
def test_replacer_is_replace(names: tuple[str, ...]) -> None:
    quick = Quick("a", 5, frozenset({"t"}), [1])
    values: dict[str, Any] = {"name": "b", "count": 7, "tags": frozenset({"u"}), "items": [2]}
    changed = replacer(Quick, *names)(quick, *(values[n] for n in names))
    assert changed == replace(quick, **{n: values[n] for n in names})
    assert type(changed) is Quick


def test_replacer_refuses_what_is_not_a_field_once() -> None:
    with pytest.raises(TypeError):
        replacer(Quick, "nothing")
    with pytest.raises(TypeError):
        replacer(Quick, "count", "count")
