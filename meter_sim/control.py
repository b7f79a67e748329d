"""The control port: JSON lines on loopback, one request and one reply per line.

Requests are validated with pydantic (this is an edge); every reply is
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}`` and a rejected
request changes nothing. ``meter-sim ctl`` turns its arguments into these requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from meter_sim.errors import ControlError, SetupError, SimError
from meter_sim.faults import FaultKind, FaultSpec
from meter_sim.physics import Tamper

log = logging.getLogger(__name__)


class Simulator(Protocol):
    """What the control port drives: the Modbus simulator and the DL/T 645 one alike."""

    def keypad(self, number: int, digits: str) -> int: ...

    def press_button(self, number: int) -> None: ...

    def set_tamper(self, number: int, tamper: Tamper | str, on: bool) -> None: ...

    def set_load(self, number: int, watts: int | None) -> None: ...

    def inject_fault(
        self, number: int | str, kind: FaultKind | str, probability: float = 1.0, **options: float
    ) -> FaultSpec: ...

    def clear_faults(
        self, number: int | str = ..., kind: FaultKind | str | None = None
    ) -> None: ...

    def state(self, number: int) -> dict[str, Any]: ...


MAX_LINE = 64 * 1024


class _Req(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KeypadRequest(_Req):
    cmd: Literal["keypad"]
    unit: int
    digits: str


class ButtonRequest(_Req):
    cmd: Literal["button"]
    unit: int


class TamperRequest(_Req):
    cmd: Literal["tamper"]
    unit: int
    tamper: str
    on: bool


class LoadRequest(_Req):
    cmd: Literal["load"]
    unit: int
    watts: int | None = Field(description="null: back to the customer-class profile")


class FaultRequest(_Req):
    cmd: Literal["fault"]
    unit: int | Literal["all"]
    kind: FaultKind | Literal["clear"]
    probability: float = 1.0
    options: dict[str, float] = Field(default_factory=dict)


class StateRequest(_Req):
    cmd: Literal["state"]
    unit: int


ControlRequest = Annotated[
    KeypadRequest | ButtonRequest | TamperRequest | LoadRequest | FaultRequest | StateRequest,
    Field(discriminator="cmd"),
]
_ADAPTER: TypeAdapter[ControlRequest] = TypeAdapter(ControlRequest)


def parse_request(line: bytes | str) -> ControlRequest:
    """One control request from a JSON line; :class:`ControlError` says what is wrong."""
    try:
        return _ADAPTER.validate_json(line)
    except ValidationError as exc:
        err = exc.errors()[0]
        # Drop the union's own tags ("fault", "str-enum[...]") from the location.
        loc = [str(p) for p in err["loc"][1:] if "[" not in str(p)] or ["request"]
        where = ".".join(loc)
        raise ControlError(f"{where}: {err['msg']}") from None


def execute(sim: Simulator, req: ControlRequest) -> Any:
    """Carry out one request on the simulator; returns the JSON-ready result."""
    match req:
        case KeypadRequest(unit=unit, digits=digits):
            return {"keypad_seq": sim.keypad(unit, digits)}
        case ButtonRequest(unit=unit):
            sim.press_button(unit)
            return {"pressed": unit}
        case TamperRequest(unit=unit, tamper=tamper, on=on):
            sim.set_tamper(unit, tamper, on)
            return {"tamper": tamper, "on": on}
        case LoadRequest(unit=unit, watts=watts):
            sim.set_load(unit, watts)
            return {"load_w": watts}
        case FaultRequest(unit=unit, kind="clear"):
            sim.clear_faults(unit)
            return {"cleared": unit}
        case FaultRequest(unit=unit, kind=kind, probability=p, options=opts):
            spec = sim.inject_fault(unit, kind, p, **opts)
            return spec.model_dump(mode="json")
        case StateRequest(unit=unit):
            return sim.state(unit)
    raise ControlError(f"unhandled request {req!r}")  # pragma: no cover


def handle_line(sim: Simulator, line: bytes) -> dict[str, Any]:
    try:
        return {"ok": True, "result": execute(sim, parse_request(line))}
    except SimError as exc:
        return {"ok": False, "error": str(exc)}


async def _client(
    sim: Simulator, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError:
                writer.write(b'{"ok": false, "error": "request line too long"}\n')
                break
            except asyncio.IncompleteReadError:
                break
            if not line.strip():
                continue
            reply = handle_line(sim, line)
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def serve_control(sim: Simulator, host: str, port: int) -> asyncio.Server:
    """Listen for control clients (loopback only: it changes meters without asking)."""
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise SetupError(f"the control port listens on loopback only, not {host}")
    try:
        return await asyncio.start_server(
            lambda r, w: _client(sim, r, w), host, port, limit=MAX_LINE, reuse_address=True
        )
    except OSError as exc:
        raise SetupError(f"control port {host}:{port}: {exc.strerror}") from None


async def request(host: str, port: int, payload: dict[str, Any]) -> Any:
    """Send one control request and return its reply (what ``meter-sim ctl`` does)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(json.dumps(payload).encode() + b"\n")
        await writer.drain()
        line = await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    if not line:
        raise ControlError("the simulator closed the control connection without a reply")
    reply: Any = json.loads(line)
    return reply
