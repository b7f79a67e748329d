"""The core is pure: importing every module of gateway/core loads no pydantic, no I/O library (asyncio, sqlite3, paho, pymodbus, serial) and nothing of the gateway's shell."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "gateway" / "core"
FORBIDDEN = ("pydantic", "asyncio", "sqlite3", "paho", "pymodbus", "serial")


def test_the_core_imports_nothing_of_the_shell() -> None:
    modules = sorted(
        f"gateway.core.{path.stem}" for path in CORE.glob("*.py") if path.stem != "__init__"
    )
    assert "gateway.core.step" in modules
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    loaded = json.loads(
        subprocess.run(
            [sys.executable, "-c", script], check=True, capture_output=True, text=True
        ).stdout
    )
    shell = [m for m in loaded if m.startswith("gateway.") and not m.startswith("gateway.core")]
    outside = [m for m in loaded if m.split(".")[0] in FORBIDDEN]
    assert shell == []
    assert outside == []
