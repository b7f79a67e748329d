"""Read and switch one DL/T 645 meter through its model: the 645 twin of :mod:`gateway.meter_io`.

A read yields the same :class:`~gateway.meter_io.MeterSnapshot` a Modbus meter does:
energy in whole Wh rounded down, power in W, voltage in V, the relay from the status
word (``relay_open`` inverted), and every named status bit set as a flag
(``relay_command_open``, ``protected``, ``alarm``, ``reverse_energy``, ...), and the
measured fields (current, power factor, frequency, ...) of the points read, by the rules
every meter's values follow (:mod:`gateway.measured`). Each point is one exchange on
the bus, so a poll reads only ``polled`` points: by default energy and the status word,
what billing and enforcement need (at 2400 baud about 0.4 s a meter); the bus reads the
``measured`` points beside them now and then (:meth:`Dlt645MeterIO.read_with`). Remote
control (1CH) needs the meter's password and operator code, per-meter secrets the caller
holds (the store keeps them as a ``control_secret``, parsed here, or
``esam`` for a meter whose commands only the utility's security module can make).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal

from gateway.dlt645_port import Dlt645IOError, Dlt645Port
from gateway.measured import READING_POINTS, Number, field_rule
from gateway.meter_io import MeterSnapshot, whole_wh_step
from gateway.modbus_port import IOFailure
from protocol.dlt645.bcd import NumberFormat
from protocol.dlt645.clock import MeterTime
from protocol.dlt645.credentials import OperatorCode, Password
from protocol.dlt645.frame import PREAMBLE, Address
from protocol.dlt645.messages import ReadReply, ReadRequest
from protocol.dlt645.meter_map import (
    RELAY_OPEN_BIT,
    UNITS,
    Dlt645Capability,
    Dlt645Map,
    Dlt645Point,
)
from protocol.dlt645.terms import ControlCommand
from protocol.errors import DecodeError
from protocol.messages import FIELD_OF_POINT

log = logging.getLogger(__name__)

#: What a poll reads unless told otherwise: billing and enforcement need nothing more.
DEFAULT_POLLED = ("energy_import", "status")
#: How long a remote-control command stays valid on the meter's clock by default.
COMMAND_VALIDITY = timedelta(minutes=5)

#: The capability each remote-control command needs.
COMMAND_CAPABILITY: dict[ControlCommand, Dlt645Capability] = {
    ControlCommand.TRIP: Dlt645Capability.RELAY,
    ControlCommand.CLOSE: Dlt645Capability.RELAY,
    ControlCommand.ALLOW_CLOSE: Dlt645Capability.CLOSE_ALLOWED,
    ControlCommand.ALARM: Dlt645Capability.ALARM,
    ControlCommand.ALARM_OFF: Dlt645Capability.ALARM,
    ControlCommand.PROTECT: Dlt645Capability.PROTECT,
    ControlCommand.PROTECT_OFF: Dlt645Capability.PROTECT,
}


@dataclass(frozen=True, slots=True)
class Dlt645Credentials:
    """A meter's remote-control secrets: password (with its level) and operator code."""

    password: Password
    operator: OperatorCode

    def __repr__(self) -> str:
        return f"Dlt645Credentials(password=***, operator={self.operator})"


#: ``control_secret`` of a meter whose remote control only the utility's ESAM can make.
ESAM = "esam"
ESAM_REASON = (
    "ESAM meter (State Grid 2013): remote control is encrypted with the utility's "
    "security module, which this gateway does not hold; read and billed, not switched"
)
NO_CONTROL_REASON = "no password enrolled for remote control: read and billed, not switched"


def parse_control_secret(text: str) -> Dlt645Credentials | None:
    """``"PASSWORD OPERATOR"`` (8 hex digits each) as credentials, ``"esam"`` as None;
    ValueError says what is wrong."""
    if text.strip().lower() == ESAM:
        return None
    parts = text.split()
    if len(parts) != 2:
        raise ValueError("a control secret is 'PASSWORD OPERATOR' (8 hex digits each) or 'esam'")
    return Dlt645Credentials(Password.parse(parts[0]), OperatorCode.parse(parts[1]))


def control_secret(password: str, operator: str) -> str:
    """The stored form of a password and operator code (each checked: ValueError)."""
    creds = Dlt645Credentials(Password.parse(password), OperatorCode.parse(operator))
    return f"{creds.password} {creds.operator}"


def command_deadline(now: datetime, validity: timedelta = COMMAND_VALIDITY) -> MeterTime:
    """The valid-until of a command sent at ``now`` (in the meters' own time zone)."""
    return MeterTime.from_datetime(now + validity)


def snapshot_from(model_map: Dlt645Map, payloads: Mapping[str, bytes]) -> MeterSnapshot:
    """Turn the data of polled points (by name) into a snapshot (pure); DecodeError when a
    point does not decode."""
    if "energy_import" not in payloads:
        raise KeyError("energy_import")  # as meter_io: no snapshot without energy
    energy_point = model_map.point("energy_import")
    energy = energy_point.base_value(payloads["energy_import"])
    wh = energy.to_integral_value(ROUND_FLOOR)
    if wh < 0:
        raise DecodeError(f"energy_import: negative energy {wh} Wh", payloads["energy_import"])
    power: int | None = None
    if "active_power" in payloads:
        watts = model_map.point("active_power").base_value(payloads["active_power"])
        power = int(watts.to_integral_value(ROUND_HALF_EVEN))
    voltage: float | None = None
    if "voltage" in payloads:
        volts = float(model_map.point("voltage").base_value(payloads["voltage"]))
        voltage = volts if math.isfinite(volts) else None
    flags: set[str] = set()
    relay: bool | None = None
    for point in model_map.status_points:
        if point.name not in payloads:
            continue
        set_bits = point.flags(point.word(payloads[point.name]))
        flags |= set_bits
        if RELAY_OPEN_BIT in point.bits:
            relay = RELAY_OPEN_BIT not in set_bits
    return MeterSnapshot(
        energy_import_wh=int(wh),
        power_w=power,
        voltage_v=voltage,
        relay_closed=relay,
        flags=frozenset(flags),
        keypad_seq=None,
        keypad_digits=None,
        measured=measured_values(model_map, payloads),
        resolution_wh=register_step_wh(energy_point),
    )


def measured_values(
    model_map: Dlt645Map, payloads: Mapping[str, bytes]
) -> tuple[tuple[str, Number], ...]:
    """The measured reading fields (``protocol.messages.MEASURED``) of the points read, in
    the fields' order: each in its field's unit, rounded to the point's resolution (its
    format's last decimal), as a Modbus meter's; data that does not decode or a value no
    real meter reports (a power factor beyond 1) is left out."""
    out: list[tuple[str, Number]] = []
    for name, field in FIELD_OF_POINT.items():
        data = payloads.get(name)
        if data is None:
            continue
        point = model_map.point(name)
        if not isinstance(point.format, NumberFormat):
            continue  # a model's measurements are numbers (checked on load)
        try:
            number = point.number(data)
        except DecodeError:
            continue
        resolution = Decimal(1).scaleb(-point.format.decimals)
        value = field_rule(field, point.unit, name).value(number, resolution)
        if value is not None:
            out.append((field, value))
    return tuple(out)


def exchange_bytes(point: Dlt645Point, preamble: int = PREAMBLE) -> int:
    """The bytes on the line to read ``point`` once (11H and its 91H, wake-up bytes
    included): what each point costs a poll."""
    address = Address.of_number(1)
    request = ReadRequest(address, point.di).to_bytes(preamble)
    reply = ReadReply(address, point.di, bytes(point.size)).to_bytes(preamble)
    return len(request) + len(reply)


def register_step_wh(point: Dlt645Point) -> int:
    """One count of an energy register in whole Wh (``XXXXXX.XX`` kWh: 10 Wh), the step the
    plausibility limit allows on top of the rated power's energy."""
    if not isinstance(point.format, NumberFormat):
        return 1
    step = Decimal(1).scaleb(-point.format.decimals) * UNITS["energy"].get(point.unit, Decimal(1))
    return whole_wh_step(step)


class Dlt645MeterIO:
    """Reads and remote control of one DL/T 645 meter model on any :class:`Dlt645Port`."""

    def __init__(
        self,
        model_map: Dlt645Map,
        polled: Sequence[str] = DEFAULT_POLLED,
        measured: Sequence[str] = (),
    ) -> None:
        missing = [name for name in polled if not model_map.has(name)]
        if missing:
            raise ValueError(f"map {model_map.name!r} has no point(s) {', '.join(missing)}")
        unknown = [name for name in measured if name not in READING_POINTS]
        if unknown:
            raise ValueError(f"no reading field for point(s) {', '.join(unknown)}")
        self.model_map = model_map
        self.polled = tuple(polled)
        #: the points of ``measured`` this model has and a poll does not read anyway (a
        #: point the model lacks is not read)
        self.measured = tuple(
            name for name in measured if model_map.has(name) and name not in self.polled
        )
        self._relay_point = next(
            (p for p in model_map.status_points if RELAY_OPEN_BIT in p.bits), None
        )

    async def read_points(
        self, port: Dlt645Port, address: Address, names: Sequence[str]
    ) -> dict[str, bytes]:
        """The data bytes of the named points, one exchange each."""
        out: dict[str, bytes] = {}
        for name in names:
            point = self.model_map.point(name)
            data = await port.read(address, point.di)
            if len(data) != point.size:
                raise Dlt645IOError(
                    address,
                    IOFailure.GARBLED,
                    f"{name}: {len(data)} data bytes, the model says {point.size}",
                )
            out[name] = data
        return out

    async def read(self, port: Dlt645Port, address: Address) -> MeterSnapshot:
        """A reading of the ``polled`` points."""
        snapshot, _ = await self.read_with(port, address, ())
        return snapshot

    async def read_with(
        self, port: Dlt645Port, address: Address, measured: Sequence[str]
    ) -> tuple[MeterSnapshot, frozenset[str]]:
        """A reading of the ``polled`` points and then the ``measured`` ones named, with the
        names of those the meter refused. Energy and status come first and a failure there
        fails the read; after them, a point the meter refuses (an error reply: no such
        data) is left out, and any other failure ends the measured points of this reading,
        which keeps what was read: the energy bills, the rest is information."""
        payloads = await self.read_points(port, address, self.polled)
        refused: set[str] = set()
        for name in measured:
            try:
                (data,) = (await self.read_points(port, address, [name])).values()
            except Dlt645IOError as exc:
                if exc.kind is IOFailure.EXCEPTION:
                    refused.add(name)
                    continue
                log.warning("%s not read: %s", name, exc)
                break
            try:
                self.model_map.point(name).number(data)
            except DecodeError as exc:
                log.warning("meter %s: %s left out: %s", address, name, exc.problem)
                continue
            payloads[name] = data
        try:
            return snapshot_from(self.model_map, payloads), frozenset(refused)
        except DecodeError as exc:
            raise Dlt645IOError(address, IOFailure.GARBLED, str(exc)) from exc

    async def read_relay(self, port: Dlt645Port, address: Address) -> bool:
        """Whether the relay is closed, from the status word (the read-back after a command)."""
        point = self._relay_point
        if point is None:
            raise ValueError(f"map {self.model_map.name!r} has no status word with the relay")
        (data,) = (await self.read_points(port, address, [point.name])).values()
        try:
            return RELAY_OPEN_BIT not in point.flags(point.word(data))
        except DecodeError as exc:
            raise Dlt645IOError(address, IOFailure.GARBLED, str(exc)) from exc

    async def read_clock(self, port: Dlt645Port, address: Address) -> MeterTime:
        """The meter's clock (date and time points; two exchanges)."""
        payloads = await self.read_points(port, address, ["date", "time"])
        try:
            return MeterTime.from_date_and_time(payloads["date"], payloads["time"])
        except DecodeError as exc:
            raise Dlt645IOError(address, IOFailure.GARBLED, str(exc)) from exc

    async def control(
        self,
        port: Dlt645Port,
        address: Address,
        credentials: Dlt645Credentials,
        command: ControlCommand,
        valid_until: MeterTime,
    ) -> None:
        """Send one remote-control command the model supports (ValueError if it does not)."""
        needed = COMMAND_CAPABILITY[command]
        if needed not in self.model_map.capabilities:
            raise ValueError(
                f"map {self.model_map.name!r} lacks capability {needed} for {command.name}"
            )
        await port.control(
            address, credentials.password, credentials.operator, command, valid_until
        )
