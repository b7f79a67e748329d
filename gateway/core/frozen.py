"""A cheaper ``__init__`` for the frozen slotted dataclasses built on every reading.

The ``__init__`` that ``dataclasses`` writes for a frozen class sets each field with
``object.__setattr__``, looked up again per field; setting the slots through their own
descriptors, bound once, does the same about three times faster. The step builds a ledger,
a state, a spend sample and its commands per reading, so this is a good part of its cost.
"""

from __future__ import annotations

import inspect
from dataclasses import MISSING, fields, is_dataclass
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
