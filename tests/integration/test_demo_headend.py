"""The reference headend (examples/headend.py), subscribed to a running `make demo`, sees every message valid against the published schemas and no sequence gap."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from examples.headend import Headend, HeadendClient
from tests.support.mosquitto import mosquitto_binary

pytestmark = [pytest.mark.broker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DURATION_S = 40
BROKER_LINE = re.compile(r"broker: mosquitto \(real broker, .*\) on ([\d.]+):(\d+)")


def test_reference_headend_sees_no_violation_and_no_gap(tmp_path: Path) -> None:
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed (make mosquitto)")
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prepaid_demo",
            "--duration",
            str(DURATION_S),
            "--workdir",
            str(tmp_path / "site"),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    headend = Headend(tmp_path / "headend.db")
    client: HeadendClient | None = None
    output: list[str] = []
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            output.append(line)
            match = BROKER_LINE.search(line)
            if match and client is None:
                client = HeadendClient(headend, match.group(1), int(match.group(2)))
                client.start()
        assert demo.wait(timeout=60) == 0, "".join(output[-40:])
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        if demo.stdout is not None:
            demo.stdout.close()
        if client is not None:
            time.sleep(0.5)  # the last deliveries in flight on the client's own thread
            client.stop()
    assert client is not None, "".join(output[-40:])
    summary = headend.gateways["gw-demo"]
    assert summary.violations == 0, headend.violation_log[:5]
    assert summary.missing == 0
    assert summary.gaps_seen == 0
    assert summary.readings > 100
    assert len(summary.meters) == 20
