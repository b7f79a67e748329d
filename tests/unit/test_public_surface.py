"""The provisioning CLI reaches the gateway only through gateway.public (the config, the store, the meter model and the meter I/O facade), and that surface names only what exists."""

from __future__ import annotations

import ast
from pathlib import Path

import gateway.public

ROOT = Path(__file__).resolve().parents[2]


def _gateway_imports(folder: Path) -> list[tuple[str, str]]:
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("gateway")
            ):
                found.append((str(path.relative_to(ROOT)), node.module))
            elif isinstance(node, ast.Import):
                found += [
                    (str(path.relative_to(ROOT)), a.name)
                    for a in node.names
                    if a.name.startswith("gateway")
                ]
    return found


def test_provisioning_imports_only_the_public_surface() -> None:
    imports = _gateway_imports(ROOT / "provisioning")
    assert imports, "provisioning should use the gateway's public surface"
    assert [(f, m) for f, m in imports if m != "gateway.public"] == []


def test_the_surface_exports_what_it_lists() -> None:
    assert all(hasattr(gateway.public, name) for name in gateway.public.__all__)
    used = {
        alias.name
        for path in (ROOT / "provisioning").rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.module == "gateway.public"
        for alias in node.names
    }
    assert used <= set(gateway.public.__all__)
    assert set(gateway.public.__all__) - used == set(), "unused names widen the surface"
