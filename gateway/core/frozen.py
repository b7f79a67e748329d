"""Faster building of the frozen slotted dataclasses made on every reading.

``quick_init``: the ``__init__`` that ``dataclasses`` writes for a frozen class sets each
field with ``object.__setattr__``, looked up again per field; setting the slots through
their own descriptors, bound once, does the same about twice as fast. It is the one place
the core runs ``exec`` (as ``dataclasses`` itself does, from the field names): without
it, with the ``__init__`` dataclasses writes or with a loop over the setters, a steady
reading's step is about a quarter slower (docs/benchmarks.md, the reshape's targets).

``replacer``: ``dataclasses.replace`` for the fast path, planned once per set of fields,
so that no field can be left at its default by a hand-written positional constructor.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import MISSING, fields, is_dataclass
from operator import attrgetter, itemgetter
from typing import Any, TypeVar

T = TypeVar("T")


def quick_init(cls: type[T]) -> type[T]:
    """Give the frozen slotted dataclass ``cls`` an equivalent ``__init__`` (same parameters,
    defaults and factories) that sets its slots through their descriptors. Only for classes
    without ``__post_init__``, init-only or keyword-only fields."""
    if not is_dataclass(cls) or not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise TypeError(f"{cls.__name__} is not a frozen dataclass")
    if hasattr(cls, "__post_init__") or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} has a __post_init__ or no slots")
    original = inspect.signature(cls.__init__).parameters
    params, body = [], []
    scope: dict[str, Any] = {}
    for f in fields(cls):
        if not f.init or f.kw_only:
            raise TypeError(f"{cls.__name__}.{f.name}: only plain init fields")
        scope[f"_set_{f.name}"] = cls.__dict__[f.name].__set__
        if f.default is not MISSING:
            scope[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
            body.append(f"    _set_{f.name}(self, {f.name})")
        elif f.default_factory is not MISSING:
            # the marker dataclasses shows in the signature for "made by the factory"
            scope[f"_marker_{f.name}"] = original[f.name].default
            scope[f"_factory_{f.name}"] = f.default_factory
            params.append(f"{f.name}=_marker_{f.name}")
            body.append(
                f"    _set_{f.name}(self, _factory_{f.name}()"
                f" if {f.name} is _marker_{f.name} else {f.name})"
            )
        else:
            params.append(f.name)
            body.append(f"    _set_{f.name}(self, {f.name})")
    source = f"def __init__(self, {', '.join(params)}):\n" + "\n".join(body or ["    pass"])
    exec(source, scope)  # noqa: S102 - built from the field names above, as dataclasses does
    init = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__annotations__ = cls.__init__.__annotations__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


def _tuple_of(getter: Callable[..., Any], keys: Sequence[Any]) -> Callable[[Any], tuple[Any, ...]]:
    """``getter(*keys)`` that always returns a tuple (the operator getters return the
    bare value for one key)."""
    if len(keys) == 1:
        one = getter(keys[0])
        return lambda obj: (one(obj),)
    if not keys:
        return lambda _obj: ()
    many: Callable[[Any], tuple[Any, ...]] = getter(*keys)
    return many


def replacer(cls: type[T], *names: str) -> Callable[..., T]:
    """``dataclasses.replace(obj, **dict(zip(names, values)))`` as ``f(obj, *values)``,
    planned once: the other fields are read with one ``attrgetter``, merged with the new
    values in field order by one ``itemgetter``, and the positional ``__init__`` is called
    once (a quarter of what ``replace`` adds to a positional call)."""
    every = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    if not set(names) <= set(every) or len(set(names)) != len(names):
        raise TypeError(f"{cls.__name__}: {names} are not distinct fields")
    kept = [name for name in every if name not in names]
    read = _tuple_of(attrgetter, kept)
    slot = {name: i for i, name in enumerate(kept)}
    slot.update({name: len(kept) + i for i, name in enumerate(names)})
    pick = _tuple_of(itemgetter, [slot[name] for name in every])

    def replaced(obj: T, /, *values: Any) -> T:
        return cls(*pick(read(obj) + values))

    replaced.__qualname__ = f"replace {cls.__name__}.{'/'.join(names)}"
    return replaced
