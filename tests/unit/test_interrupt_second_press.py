"""Once the operator's stop is under way, a second Ctrl-C or SIGTERM changes nothing: it neither raises another Interrupted into the first one's clean-up nor, after the command's handlers are gone, kills the process before it says what it kept (CI saw exit -15 instead of 143 when the second SIGTERM of an impatient operator landed late)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

SCRIPT = """
import os, signal, sys
from provisioning.interrupt import Interrupted, run_async, signals_interrupt

async def wait():
    os.kill(os.getpid(), {sig})
    import asyncio
    await asyncio.sleep(5)

with signals_interrupt():
    try:
        {body}
    except Interrupted as exc:
        os.kill(os.getpid(), {sig})  # the second press, during the clean-up
        print("clean-up done", flush=True)
        code = exc.exit_code
os.kill(os.getpid(), {sig})  # and a late one, after the command's handlers are gone
print("said what it kept", flush=True)
sys.exit(code)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize(
    "body",
    ["os.kill(os.getpid(), {sig}); signal.pause()", "run_async(wait)"],
    ids=["sync", "async"],
)
def test_a_second_press_changes_nothing(sig: signal.Signals, body: str) -> None:
    script = SCRIPT.format(sig=int(sig), body=body.format(sig=int(sig)))
    ran = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert "Traceback" not in ran.stderr, ran.stderr
    assert ran.stdout.splitlines() == ["clean-up done", "said what it kept"], ran
    assert ran.returncode == 128 + sig
