"""Where an RTU exchange's time goes: the gateway's RtuPort alone (no core, store or MQTT)
reading 30 PE-1 meters round-robin from ``meter_sim serve --baud``, with per-exchange
timings beside the line's arithmetic. Diagnostic for bench_gateway (b):

    .venv/bin/python -m bench.rtu_probe [--baud 115200] [--seconds 5]   # from the repo root

- reply: from our request's write to holding the whole reply (ideal: request + 3.5
  characters of silence + reply on the wire);
- turnaround: from the read returning to writing the next request (the silence counts
  from the reply's arrival, a loop iteration and the decoding earlier).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from bench.bench_gateway import BLOCK_COUNT, start_sim
from gateway.meter_io import MeterIO
from gateway.modbus_port import RtuPort
from protocol.modbus import rtu_char_time, rtu_silence
from protocol.regmap import load_map

METERS = 30


class ProbedPort(RtuPort):
    """An RtuPort that notes when each request went on the wire."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.writes: list[float] = []

    def _write(self, frame: bytes) -> None:
        self.writes.append(time.monotonic())
        super()._write(frame)


def spread(xs: list[float]) -> str:
    s = sorted(xs)
    return (
        f"median {1000 * statistics.median(s):.3f}  p90 {1000 * s[9 * len(s) // 10]:.3f}  "
        f"mean {1000 * statistics.mean(s):.3f} ms"
    )


async def probe(baud: int, seconds: float) -> None:
    sim = start_sim(
        "--meters", str(METERS), "--no-tcp", "--rtu-tcp", "127.0.0.1:0", "--baud", str(baud)
    )
    try:
        assert sim.rtu_tcp is not None
        host, port_no = sim.rtu_tcp
        port = ProbedPort("probe", f"socket://{host}:{port_no}", baud=baud, timeout=1.0)
        io = MeterIO(load_map("pe1"))
        for unit in range(1, METERS + 1):  # connect and warm up
            await io.read(port, unit)
        port.writes.clear()
        held: list[float] = []
        n, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < seconds:
            await io.read(port, n % METERS + 1)
            held.append(time.monotonic())
            n += 1
        elapsed = time.monotonic() - t0
        await port.close()
    finally:
        sim.stop()
    char, silence = rtu_char_time(baud), rtu_silence(baud)
    reply_ideal = (8 + 5 + 2 * BLOCK_COUNT) * char + silence
    cycle_ideal = reply_ideal + silence
    writes = port.writes
    replies = [h - w for w, h in zip(writes, held, strict=True)]
    turns = [w - h for h, w in zip(held, writes[1:], strict=False)]
    print(
        f"{baud} baud, RtuPort alone: {n / elapsed:.1f} meters/s of {1 / cycle_ideal:.1f}: "
        f"{100 * n / elapsed * cycle_ideal:.1f}%  (exchange {1000 * elapsed / n:.3f} ms, "
        f"ideal {1000 * cycle_ideal:.3f})"
    )
    print(f"  reply       {spread(replies)}  (ideal {1000 * reply_ideal:.3f})")
    print(f"  turnaround  {spread(turns)}  (silence {1000 * silence:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baud", type=int, default=115200)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    asyncio.run(probe(args.baud, args.seconds))


if __name__ == "__main__":
    main()
