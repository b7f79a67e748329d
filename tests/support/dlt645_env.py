"""A DL/T 645 bus in a test gateway's config: the simulator's bus served over TCP."""

from __future__ import annotations

from typing import Any

from meter_sim.dlt645_simulator import Dlt645Simulator

#: The simulator's default password with an operator code, as enrolment stores them.
PASSWORD, OPERATOR = "02000000", "00000001"


def dlt645_bus(sim: Dlt645Simulator, name: str = "dlt-1", **extra: Any) -> dict[str, Any]:
    """The ``[[buses]]`` table of ``sim``'s bus (RTU over TCP, the simulator's baud, 8E1)."""
    host, port = sim.rtu_tcp_address or ("", 0)
    return {
        "name": name,
        "kind": "rtu",
        "protocol": "dlt645",
        "device": f"socket://{host}:{port}",
        "baud": sim.baud or 9600,
        "parity": "E",
        "timeout_s": 0.5,
        "retries": 0,
        **extra,
    }
