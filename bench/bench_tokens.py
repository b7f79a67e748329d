"""Token verification speed: keypad and online verifications per second at purchase
counter 0 and 60,000 (they must match within noise: the replay window is constant
time), and OpenPAYGO's own Python library decoding a token at count 1,000, for the ratio.

OpenPAYGO is installed for this benchmark only (not a project dependency); when missing
the script installs it into the running interpreter with pip, unless ``--no-install``.

    .venv/bin/python bench/bench_tokens.py [--seconds 1.0] [--repeats 5] [--no-install]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.tokens import (
    Accepted,
    ReplayWindow,
    TokenClass,
    derive_meter_key,
    issue_keypad,
    issue_online,
    verify_keypad,
    verify_online,
)

METER = "PE1-000042"
VENDING_KEY = bytes(range(32))
SIGNING_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
OPENPAYGO_KEY = "a29ab82edc5fbbc41ec9530f6dac86b1"


def batch_size(call: Callable[[], object], seconds: float) -> int:
    """How many calls take about ``seconds``."""
    batch = 1
    while True:
        start = time.perf_counter()
        for _ in range(batch):
            call()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds / 4:
            return max(1, int(batch * seconds / elapsed))
        batch *= 2


def rates(
    calls: dict[str, Callable[[], object]], seconds: float, repeats: int
) -> dict[str, tuple[float, float]]:
    """Calls per second of each case: (best, median) over ``repeats`` rounds. The cases
    take turns inside each round, so a busy machine slows them alike; the best round is
    the figure to compare (as ``timeit`` advises: slower rounds measure the neighbours)."""
    batches = {name: batch_size(call, seconds) for name, call in calls.items()}
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(batches[name]):
                call()
            samples[name].append(batches[name] / (time.perf_counter() - start))
    return {name: (max(values), statistics.median(values)) for name, values in samples.items()}


def report(name: str, best: float, median: float) -> None:
    print(f"{name:36s} {best:10,.0f} /s {1e6 / best:9.1f} us   (median {median:,.0f} /s)")


def window_at(counter: int) -> ReplayWindow:
    """A meter that has used every other counter of the 64 below ``counter - 1``."""
    if counter == 0:
        return ReplayWindow.fresh(0)
    return ReplayWindow(0, counter - 1, 0xAAAA_AAAA_AAAA_AAAA & ((1 << min(counter - 1, 64)) - 1))


def keypad_case(counter: int) -> Callable[[], object]:
    key = derive_meter_key(VENDING_KEY, METER, 0)
    digits = issue_keypad(VENDING_KEY, METER, 0, TokenClass.CREDIT, counter, 1250)
    window = window_at(counter)
    assert isinstance(verify_keypad(digits, METER, key, window), Accepted)
    return lambda: verify_keypad(digits, METER, key, window)


def online_case(counter: int) -> Callable[[], object]:
    token = issue_online(
        SIGNING_KEY, "v1", METER, counter, TokenClass.CREDIT, 1250, "KES",
        bytes(16), NOW, NOW + timedelta(days=7),
    )  # fmt: skip
    keys = {"v1": SIGNING_KEY.public_key()}
    window = window_at(counter)
    assert isinstance(verify_online(token, METER, keys, window, NOW), Accepted)
    return lambda: verify_online(token, METER, keys, window, NOW)


def load_openpaygo(install: bool) -> Any:
    try:
        return importlib.import_module("openpaygo")
    except ImportError:
        if not install:
            return None
    print("installing openpaygo for this benchmark only ...", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "openpaygo"], check=True)
    return importlib.import_module("openpaygo")


def openpaygo_case(openpaygo: Any, count: int) -> Callable[[], object]:
    """Decode an Add-Time token of count ``count`` on a device whose last count is
    ``count - 2`` (the library walks the hash chain from count 0 on every decode)."""
    _, token = openpaygo.generate_token(secret_key=OPENPAYGO_KEY, count=count - 2, value=7)
    last = count - 2

    def decode() -> tuple[Any, Any]:
        value, _, found, _ = openpaygo.decode_token(
            token=token, secret_key=OPENPAYGO_KEY, count=last, used_counts=[]
        )
        return value, found

    value, found = decode()
    assert value == 7, (value, found)
    return decode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=0.05, help="per timed batch")
    parser.add_argument("--repeats", type=int, default=41, help="interleaved rounds")
    parser.add_argument("--no-install", action="store_true", help="skip OpenPAYGO if missing")
    args = parser.parse_args()

    print(f"python {sys.version.split()[0]}, {args.repeats} interleaved rounds: best and median")
    cases = {
        "keypad verify, counter 0": keypad_case(0),
        "keypad verify, counter 60000": keypad_case(60_000),
        "online verify, counter 0": online_case(0),
        "online verify, counter 60000": online_case(60_000),
    }
    results = rates(cases, args.seconds, args.repeats)
    for name, (best, median) in results.items():
        report(name, best, median)
    for channel in ("keypad", "online"):
        low = results[f"{channel} verify, counter 0"]
        high = results[f"{channel} verify, counter 60000"]
        print(
            f"{channel}: rate at counter 60000 / rate at counter 0 = "
            f"{high[0] / low[0]:.3f} (best), {high[1] / low[1]:.3f} (median)"
        )

    openpaygo = load_openpaygo(not args.no_install)
    if openpaygo is None:
        print("openpaygo not installed: .venv/bin/pip install openpaygo (benchmark only)")
        return 0
    name = f"openpaygo {importlib.metadata.version('openpaygo')} decode, count 1000"
    opg_rate, opg_median = rates(
        {name: openpaygo_case(openpaygo, 1000)}, args.seconds, args.repeats
    )[name]
    report(name, opg_rate, opg_median)
    for channel in ("keypad", "online"):
        best, median = results[f"{channel} verify, counter 60000"]
        print(
            f"{channel} verify at counter 60000: {best / opg_rate:,.0f}x (best), "
            f"{median / opg_median:,.0f}x (median) openpaygo at count 1000"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
