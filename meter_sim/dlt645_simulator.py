"""A street of DL/T 645 meters on one RS-485 bus: a pty and/or RTU over TCP, with controls.

Start it with ``async with Dlt645Simulator.start(...) as sim:``. Meters are numbered
1..N; meter n has the address ``first_address + n - 1`` (12 digits). Every meter has
the Modbus meters' physics (seeded loads, energy, relay, tampers), no keypad (DL/T 645
remote cost-control meters are topped up through the gateway) and a reconnect button.
The controls have the Modbus simulator's names, so its control port serves both.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from meter_sim.clock import Clock, ScaledClock
from meter_sim.dlt645_meter import DEFAULT_PASSWORD, Dlt645Meter
from meter_sim.dlt645_server import REPLY_DELAY, Dlt645Bus, Dlt645Session, PtyBus, serve_tcp
from meter_sim.errors import ControlError, SetupError
from meter_sim.faults import FaultSpec
from meter_sim.physics import CustomerClass, MeterModel
from meter_sim.sim_base import SimulatorBase
from protocol.dlt645.credentials import Password
from protocol.dlt645.frame import MAX_DATA, PREAMBLE, Address
from protocol.dlt645.meter_map import Dlt645Map, load_dlt645_map
from protocol.errors import MapError

#: Meters on one bus: what a concentrator's RS-485 port drives (the standard's driver
#: load is 32 unit loads; the address space allows far more).
MAX_METERS = 247
DEFAULT_BAUD = 2400


class Dlt645Simulator(SimulatorBase[Dlt645Meter, Dlt645Session]):
    """DL/T 645 meters behind one bus, with the Modbus simulator's controls."""

    def __init__(
        self,
        *,
        meters: int,
        model_map: Dlt645Map,
        clock: Clock,
        seed: int,
        first_address: int = 1,
        password: Password = DEFAULT_PASSWORD,
        classes: Mapping[int, CustomerClass] | None = None,
        baud: int | None = DEFAULT_BAUD,
        reply_delay: float = REPLY_DELAY,
        max_data: int = MAX_DATA,
    ) -> None:
        if meters < 1:
            raise SetupError("at least one meter")
        if first_address < 0 or first_address + meters - 1 > 999_999_999_999:
            raise SetupError("the meters' addresses must fit 12 digits")
        now = clock.now()
        classes = classes or {}
        super().__init__(
            meters={
                n: Dlt645Meter(
                    MeterModel(n, seed, now, classes.get(n)),
                    Address.of_number(first_address + n - 1),
                    password,
                )
                for n in range(1, meters + 1)
            },
            clock=clock,
            seed=seed,
        )
        self.regmap = model_map  # named as the Modbus simulator's, for the control port
        self.model_map = model_map
        self.baud = baud
        self.bus = Dlt645Bus(
            name="dlt645",
            model_map=model_map,
            meters=self.meters,
            clock=clock,
            faults=self.faults,
            baud=baud,
            reply_delay=reply_delay,
            reply_preamble=PREAMBLE,
            max_data=max_data,
            rng=random.Random(f"corrupt:{seed}:dlt645"),
        )

    @classmethod
    @contextlib.asynccontextmanager
    async def start(
        cls,
        *,
        meters: int = 1,
        map_name: str = "dlt645_single_phase",
        host: str = "127.0.0.1",
        rtu_pty: bool = False,
        rtu_tcp_port: int | None = 0,
        baud: int | None = DEFAULT_BAUD,
        reply_delay: float = REPLY_DELAY,
        clock: Clock | None = None,
        seed: int = 0,
        first_address: int = 1,
        password: Password = DEFAULT_PASSWORD,
        faults: Iterable[FaultSpec] = (),
        control_port: int | None = None,
        control_host: str = "127.0.0.1",
        classes: Mapping[int, CustomerClass] | None = None,
        max_data: int = MAX_DATA,
    ) -> AsyncIterator[Dlt645Simulator]:
        """Run the bus in this event loop until the block exits (port 0: a free port).

        ``baud=None`` answers at once (no wire time); ``max_data`` below 200 makes long
        replies go out in follow-up frames.
        """
        try:
            model_map = load_dlt645_map(map_name)
        except MapError as exc:
            raise SetupError(str(exc)) from None
        if meters > MAX_METERS:
            raise SetupError(f"{meters} meters: a DL/T 645 bus here holds at most {MAX_METERS}")
        if baud is not None and baud <= 0:
            raise SetupError(f"baud {baud} must be positive")
        if not 0 <= reply_delay <= 0.5:
            raise SetupError(f"reply delay {reply_delay} s outside 0..0.5 (the standard's Td)")
        if not 6 <= max_data <= MAX_DATA:
            raise SetupError(f"max data {max_data} outside 6..{MAX_DATA}")
        if not rtu_pty and rtu_tcp_port is None:
            raise SetupError("DL/T 645 needs a pty or RTU over TCP to serve on")
        sim = cls(
            meters=meters,
            model_map=model_map,
            clock=clock or ScaledClock(1.0),
            seed=seed,
            first_address=first_address,
            password=password,
            classes=classes,
            baud=baud,
            reply_delay=reply_delay,
            max_data=max_data,
        )
        for spec in faults:
            sim.faults.set(spec)
        try:
            await sim._open(host, rtu_pty, rtu_tcp_port, control_host, control_port)
            yield sim
        finally:
            await sim._close()

    async def _open(
        self,
        host: str,
        rtu_pty: bool,
        rtu_tcp_port: int | None,
        control_host: str,
        control_port: int | None,
    ) -> None:
        if rtu_tcp_port is not None:
            serving = serve_tcp(self.bus, host, rtu_tcp_port, self._sessions)
            self.rtu_tcp_address = await self._serve(serving, host, rtu_tcp_port)
        if rtu_pty:
            await self._open_pty(PtyBus(self.bus))
        await self._open_control(control_host, control_port)

    # ------------------------------------------------------------------ addressing

    def address_of(self, number: int) -> Address:
        return self._check(number).address

    @property
    def requests_served(self) -> int:
        return self.bus.requests

    # ------------------------------------------------------------------ controls

    def dlt645_meter(self, number: int) -> Dlt645Meter:
        """The meter's DL/T 645 state (address, relay command, protected, alarm, clock)."""
        return self._check(number)

    def keypad(self, number: int, digits: str) -> int:
        self._check(number)
        raise ControlError("DL/T 645 meters here have no keypad: top up through the gateway")

    def press_button(self, number: int) -> None:
        """The customer holds the button: the relay closes if close was allowed (1BH)."""
        self._check(number).press_button(self.clock.now())

    def set_clock_offset(self, number: int, seconds: float) -> None:
        """Make a meter's clock run ``seconds`` ahead of the simulated time (drift)."""
        self._check(number).clock_offset = seconds

    def state(self, number: int) -> dict[str, Any]:
        """The meter's whole state, JSON-ready, with its DL/T 645 state and faults."""
        meter = self._check(number)
        now = self.clock.now()
        meter.model.advance(now)
        out = meter.model.state()
        for key in ("keypad_seq", "keypad_digits", "keypad_pending", "keypad_ack"):
            out.pop(key, None)
        out["meter"] = number
        out["map"] = self.model_map.name
        out["dlt645"] = meter.state(now)
        out["faults"] = self._faults_of(number)
        return out
