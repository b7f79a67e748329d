"""What the Modbus simulator and the DL/T 645 one share, written once.

Both are a street of meters numbered 1..N with one :class:`~meter_sim.faults.FaultTable`,
listening servers, sessions and ptys to close, and a control port; the controls that
mean the same on both (a meter's physics, tampers, loads, faults) live here. Each
simulator adds its own meters, buses, keypad, button and state.
"""

from __future__ import annotations

import abc
import asyncio
import errno
from collections.abc import Awaitable
from typing import Any, Generic, Protocol, TypeVar

from meter_sim.clock import Clock
from meter_sim.errors import ControlError, SetupError
from meter_sim.faults import ALL, FaultKind, FaultSpec, FaultTable
from meter_sim.physics import MeterModel, Tamper
from meter_sim.transport import ByteSession, PtyLine


class _HasModel(Protocol):
    @property
    def model(self) -> MeterModel: ...


M = TypeVar("M", bound=_HasModel)
S = TypeVar("S", bound=ByteSession)


class SimulatorBase(abc.ABC, Generic[M, S]):
    """Meters by number (``M``), faults, servers and sessions (``S``), shared controls."""

    def __init__(self, *, meters: dict[int, M], clock: Clock, seed: int) -> None:
        self.clock = clock
        self.seed = seed
        self.meters = meters
        self.faults = FaultTable(seed, range(1, len(meters) + 1))
        self.rtu_tcp_address: tuple[str, int] | None = None
        self.rtu_pty_path: str | None = None
        self.control_address: tuple[str, int] | None = None
        self._servers: list[asyncio.Server] = []
        self._ptys: list[PtyLine[S]] = []
        self._sessions: set[S] = set()

    # ------------------------------------------------------------------ lifecycle

    async def _serve(
        self, serving: Awaitable[asyncio.Server], host: str, port: int
    ) -> tuple[str, int]:
        """Keep the server ``serving`` opens on ``host:port``; its (host, port)."""
        try:
            server = await serving
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise SetupError(f"{host}:{port} is already in use") from None
            raise SetupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        self._servers.append(server)
        sockname = server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    async def _open_pty(self, pty: PtyLine[S]) -> None:
        self._ptys.append(pty)
        await pty.start()
        self.rtu_pty_path = pty.path

    async def _open_control(self, host: str, port: int | None) -> None:
        if port is None:
            return
        from meter_sim.control import serve_control  # noqa: PLC0415 - control needs us

        server = await serve_control(self, host, port)
        self._servers.append(server)
        sockname = server.sockets[0].getsockname()
        self.control_address = (str(sockname[0]), int(sockname[1]))

    async def _close(self) -> None:
        for server in self._servers:
            server.close()
        sessions = list(self._sessions)
        for session in sessions:
            session.close()
        for pty in self._ptys:
            pty.close()
        for session in sessions + [pty.session for pty in self._ptys if pty.session]:
            await session.wait_closed()
        for server in self._servers:
            await server.wait_closed()
        await asyncio.sleep(0)  # let closed transports run their connection_lost

    # ------------------------------------------------------------------ controls

    def _check(self, number: int) -> M:
        meter = self.meters.get(number)
        if meter is None:
            raise ControlError(f"no meter {number} (meters are 1..{len(self.meters)})")
        return meter

    def meter(self, number: int) -> MeterModel:
        """The meter's physics, advanced to now (read it; change it through the controls)."""
        model = self._check(number).model
        model.advance(self.clock.now())
        return model

    @abc.abstractmethod
    def keypad(self, number: int, digits: str) -> int: ...

    @abc.abstractmethod
    def press_button(self, number: int) -> None: ...

    @abc.abstractmethod
    def state(self, number: int) -> dict[str, Any]: ...

    def set_tamper(self, number: int, tamper: Tamper | str, on: bool) -> None:
        try:
            kind = Tamper(tamper)
        except ValueError:
            raise ControlError(
                f"unknown tamper {tamper!r}; one of {', '.join(t.value for t in Tamper)}"
            ) from None
        self._check(number).model.set_tamper(kind, on, self.clock.now())

    def set_load(self, number: int, watts: int | None) -> None:
        """Fix the meter's demand in W (None: back to its customer-class profile)."""
        self._check(number).model.set_load(watts, self.clock.now())

    def inject_fault(
        self,
        number: int | str,
        kind: FaultKind | str,
        probability: float = 1.0,
        **options: float,
    ) -> FaultSpec:
        """Put a fault in force on meter ``number`` or on ``"all"`` (probability 0 clears)."""
        from pydantic import ValidationError  # noqa: PLC0415 - only on this path

        try:
            spec = FaultSpec.model_validate(
                {"unit": number, "kind": kind, "probability": probability, **options}
            )
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ControlError(f"fault {where}: {err['msg']}") from None
        self.faults.set(spec)
        return spec

    def clear_faults(self, number: int | str = ALL, kind: FaultKind | str | None = None) -> None:
        """Clear one kind or every fault of a meter (``"all"``: the bus-wide ones)."""
        if number != ALL:
            if not isinstance(number, int):
                raise ControlError(f"unit {number!r} is neither a meter number nor 'all'")
            self._check(number)
        try:
            fault_kind = None if kind is None else FaultKind(kind)
        except ValueError:
            raise ControlError(f"unknown fault kind {kind!r}") from None
        self.faults.clear(number, fault_kind)

    def _faults_of(self, number: int) -> list[dict[str, Any]]:
        """The faults in force on meter ``number`` (its own and the bus-wide ones), JSON-ready."""
        return [
            spec.model_dump(mode="json")
            for spec in self.faults.in_force()
            if spec.unit in (number, ALL)
        ]
