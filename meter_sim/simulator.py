"""The simulator as one object: meters, endpoints, faults and the controls tests and ctl use.

Start it with ``async with Simulator.start(...) as sim:`` (see ``docs/simulator.md``).
Meters are numbered 1..N. Modbus TCP serves meters 1..247 as unit ids 1..247 on the
first port, 248..494 as unit ids 1..247 on the next port, and so on; an RTU bus (pty
or RTU over TCP) serves meters 1..N (N <= 247) as unit ids 1..N.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from meter_sim.clock import Clock, ScaledClock
from meter_sim.errors import SetupError
from meter_sim.faults import FaultSpec
from meter_sim.pdu import SimMeter
from meter_sim.physics import CustomerClass, MeterModel
from meter_sim.registers import MapLayout
from meter_sim.server import DEFAULT_MAX_CONNECTIONS, Endpoint, PtyBus, Session, serve_tcp
from meter_sim.sim_base import SimulatorBase
from protocol.errors import MapError
from protocol.regmap import RegisterMap, load_map

log = logging.getLogger(__name__)

UNITS_PER_PORT = 247


class Simulator(SimulatorBase[SimMeter, Session]):
    """A street of simulated meters behind Modbus endpoints, with controls."""

    def __init__(
        self,
        *,
        meters: int,
        regmap: RegisterMap,
        clock: Clock,
        seed: int,
        classes: Mapping[int, CustomerClass] | None = None,
        baud: int | None = None,
        pipelining: bool = False,
        max_connections: int | None = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        if meters < 1:
            raise SetupError("at least one meter")
        now = clock.now()
        classes = classes or {}
        super().__init__(
            meters={
                n: SimMeter(MeterModel(n, seed, now, classes.get(n))) for n in range(1, meters + 1)
            },
            clock=clock,
            seed=seed,
        )
        self.regmap = regmap
        self.baud = baud
        self.pipelining = pipelining
        self.max_connections = max_connections
        self.layout = MapLayout(regmap, seed)
        self.endpoints: list[Endpoint] = []
        self.tcp_addresses: list[tuple[str, int]] = []

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    @contextlib.asynccontextmanager
    async def start(
        cls,
        *,
        meters: int = 1,
        map_name: str = "pe1",
        host: str = "127.0.0.1",
        tcp_port: int | None = 0,
        rtu_pty: bool = False,
        rtu_tcp_port: int | None = None,
        baud: int | None = None,
        clock: Clock | None = None,
        seed: int = 0,
        faults: Iterable[FaultSpec] = (),
        control_port: int | None = None,
        control_host: str = "127.0.0.1",
        classes: Mapping[int, CustomerClass] | None = None,
        pipelining: bool = False,
        max_connections: int | None = DEFAULT_MAX_CONNECTIONS,
    ) -> AsyncIterator[Simulator]:
        """Run a simulator in this event loop until the block exits.

        ``tcp_port=0`` (and ``rtu_tcp_port=0``, ``control_port=0``) take free ports; a
        fixed ``tcp_port`` with more than 247 meters takes consecutive ports from it.
        Each TCP endpoint answers one request at a time per connection unless
        ``pipelining``, and takes at most ``max_connections`` connections (None: any).
        """
        try:
            regmap = load_map(map_name)
        except MapError as exc:
            raise SetupError(str(exc)) from None
        if (rtu_pty or rtu_tcp_port is not None) and meters > UNITS_PER_PORT:
            raise SetupError(f"{meters} meters: an RTU bus holds at most {UNITS_PER_PORT}")
        if baud is not None and baud <= 0:
            raise SetupError(f"baud {baud} must be positive")
        if max_connections is not None and max_connections < 1:
            raise SetupError(f"max_connections {max_connections} must be at least 1")
        sim = cls(
            meters=meters,
            regmap=regmap,
            clock=clock or ScaledClock(1.0),
            seed=seed,
            classes=classes,
            baud=baud,
            pipelining=pipelining,
            max_connections=max_connections,
        )
        for spec in faults:
            sim.faults.set(spec)
        try:
            await sim._open(
                host=host,
                tcp_port=tcp_port,
                rtu_pty=rtu_pty,
                rtu_tcp_port=rtu_tcp_port,
                control_host=control_host,
                control_port=control_port,
            )
            yield sim
        finally:
            await sim._close()

    def _endpoint(self, name: str, framing: str, offset: int, count: int) -> Endpoint:
        meters = {u: self.meters[offset + u] for u in range(1, count + 1)}
        ep = Endpoint(
            name=name,
            framing="tcp" if framing == "tcp" else "rtu",
            layout=self.layout,
            meters=meters,
            offset=offset,
            clock=self.clock,
            faults=self.faults,
            baud=self.baud if framing == "rtu" else None,
            rng=random.Random(f"corrupt:{self.seed}:{name}"),
            pipelining=self.pipelining,
            max_connections=self.max_connections,
        )
        self.endpoints.append(ep)
        return ep

    async def _listen(self, ep: Endpoint, host: str, port: int) -> tuple[str, int]:
        return await self._serve(serve_tcp(ep, host, port, self._sessions), host, port)

    async def _open(
        self,
        *,
        host: str,
        tcp_port: int | None,
        rtu_pty: bool,
        rtu_tcp_port: int | None,
        control_host: str,
        control_port: int | None,
    ) -> None:
        n = len(self.meters)
        if tcp_port is not None:
            for k, offset in enumerate(range(0, n, UNITS_PER_PORT)):
                count = min(UNITS_PER_PORT, n - offset)
                ep = self._endpoint(f"tcp{k}", "tcp", offset, count)
                port = 0 if tcp_port == 0 else tcp_port + k
                self.tcp_addresses.append(await self._listen(ep, host, port))
        if rtu_tcp_port is not None:
            ep = self._endpoint("rtu-tcp", "rtu", 0, n)
            self.rtu_tcp_address = await self._listen(ep, host, rtu_tcp_port)
        if rtu_pty:
            await self._open_pty(PtyBus(self._endpoint("rtu-pty", "rtu", 0, n)))
        await self._open_control(control_host, control_port)

    # ------------------------------------------------------------------ addressing

    @property
    def tcp_address(self) -> tuple[str, int]:
        """(host, port) of the first Modbus TCP port (meters 1..247)."""
        if not self.tcp_addresses:
            raise SetupError("this simulator serves no Modbus TCP")
        return self.tcp_addresses[0]

    def tcp_endpoint_of(self, number: int) -> tuple[tuple[str, int], int]:
        """((host, port), unit id) where meter ``number`` answers over Modbus TCP."""
        self._check(number)
        k, unit = divmod(number - 1, UNITS_PER_PORT)
        return self.tcp_addresses[k], unit + 1

    @property
    def requests_served(self) -> int:
        return sum(ep.requests for ep in self.endpoints)

    # ------------------------------------------------------------------ controls

    def keypad(self, number: int, digits: str) -> int:
        """Type a complete 20-digit entry on the meter's keypad; returns the new keypad_seq."""
        return self._check(number).model.enter_keypad(digits, self.clock.now())

    def press_button(self, number: int) -> None:
        self._check(number).model.press_button(self.clock.now())

    def state(self, number: int) -> dict[str, Any]:
        """The meter's whole state, JSON-ready, with its faults and served registers."""
        meter = self._check(number)
        meter.model.advance(self.clock.now())
        out = meter.model.state()
        out["meter"] = number
        out["map"] = self.regmap.name
        out["holding_written"] = {str(a): v for a, v in sorted(meter.stored.items())}
        out["faults"] = self._faults_of(number)
        return out
