"""The gateway's pure core: ledger arithmetic, tariffs and enforcement. No I/O; `now` is an argument."""
