"""The garbage collector's thresholds for a gateway process.

The gateway keeps every meter's state in memory (tens of small objects per meter) and
replaces it at each reading. With CPython's defaults (700, 10, 10) the survivors of one
10,000-meter poll cycle exceed a quarter of the long-lived heap twice, so the collector
walks the whole heap twice a cycle: about 0.3 s of a 1.2 s cycle in bench/bench_ledger.py.
The core builds immutable values and few reference cycles, so young collections are made
rarer and a full one waits for 100 middle-aged ones (still bounded: a cycle left by
asyncio or an exception is freed within minutes, not kept)."""

from __future__ import annotations

import gc

#: (young, middle, full) in the sense of ``gc.set_threshold``
THRESHOLDS = (50_000, 20, 100)


def tune_collector() -> None:
    """Apply ``THRESHOLDS`` to this process (the gateway's entry point calls it once)."""
    gc.set_threshold(*THRESHOLDS)
