"""Coverage-guided fuzzing with atheris of the Modbus reply parsers, DL/T 645 byte streams, keypad digits and online tokens: hundreds of thousands of inputs, never a crash, only typed rejections."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.reliability

TARGETS = Path(__file__).with_name("fuzz_targets.py")
RUNS = {"modbus": 300_000, "dlt645": 100_000, "keypad": 100_000, "online": 100_000}
SCALE = int(os.environ.get("PREPAID_EDGE_FUZZ_SCALE", "1"))


@pytest.mark.parametrize("target", sorted(RUNS))
def test_atheris_finds_no_crash(target: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris ships wheels for x86_64 Linux only")
    runs = RUNS[target] * SCALE
    done = subprocess.run(
        [
            sys.executable,
            str(TARGETS),
            target,
            f"-runs={runs}",
            "-seed=1",
            f"-artifact_prefix={tmp_path}/",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    tail = (done.stdout + done.stderr)[-3000:]
    assert done.returncode == 0, tail
    assert f"Done {runs} runs" in done.stderr, tail
