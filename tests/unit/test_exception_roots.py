"""Every exception class that gateway/ or provisioning/ defines derives from its package's one root (GatewayError, ProvisionError), so catching the root catches all it reports."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import gateway
import provisioning
from gateway.errors import GatewayError
from provisioning.errors import ProvisionError

#: Not errors but signals that stop a command; a root handler must not report them as
#: the operator's mistake, so they stay outside the root on purpose.
SIGNALS = {"provisioning.interrupt.Interrupted"}


def _modules(package: ModuleType) -> list[ModuleType]:
    found = [package]
    for info in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + "."):
        found.append(importlib.import_module(info.name))
    return found


def _exceptions(package: ModuleType) -> list[type[BaseException]]:
    """The exception classes defined (not imported) in ``package``'s modules, except the
    private ones a module raises and catches itself and the named signals."""
    classes = {}
    for module in _modules(package):
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
                and not name.startswith("_")
                and f"{module.__name__}.{name}" not in SIGNALS
            ):
                classes[f"{module.__name__}.{name}"] = value
    return [classes[key] for key in sorted(classes)]


@pytest.mark.parametrize(
    ("package", "root", "least"),
    [(gateway, GatewayError, 15), (provisioning, ProvisionError, 6)],
    ids=["gateway", "provisioning"],
)
def test_every_exception_derives_from_the_package_root(
    package: ModuleType, root: type[Exception], least: int
) -> None:
    found = _exceptions(package)
    assert len(found) >= least  # the walk found the modules, not an empty package
    stray = [f"{cls.__module__}.{cls.__qualname__}" for cls in found if not issubclass(cls, root)]
    assert not stray, f"not under {root.__name__}: {', '.join(stray)}"
