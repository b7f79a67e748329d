"""A DL/T 645 remote cost-control meter, pure: the Modbus meters' physics behind a 645 face.

:func:`answer` takes one request frame and the simulated time and returns the reply
frames (none for a broadcast or a frame for another meter). What the meter does:

- 11H/12H: every point of its model (:mod:`protocol.dlt645.meter_map`), filled from the
  same :class:`~meter_sim.physics.MeterModel` as the Modbus meters by canonical name;
  a reply longer than ``max_data`` bytes goes out in follow-up frames (B1H, then 12H
  asks for each). An identifier the model lacks: error reply "no data".
- 13H: its address, to the wildcard address (AA bytes match any digit).
- 08H (broadcast, no reply): sets its clock; 14H writes the date or time points.
- 1CH remote control, plaintext, with the meter's password, before ``valid_until`` on
  its own clock: trip (1AH) opens the relay unless protected supply (3AH) is on, which
  refuses it; close allowed (1BH) clears the relay command and waits for the customer's
  button; direct close (1CH) closes at once; 2AH/2BH raise and clear the alarm.

Status words show, by the bit names of the model, ``relay_open``, ``relay_command_open``,
``alarm``, ``protected`` and ``reverse_energy`` (the generic models: status word 3 bits
4, 6, 7, 12 and status word 1 bit 4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from meter_sim.physics import MeterModel, round_div
from meter_sim.registers import measurement, quantities
from protocol.dlt645.bcd import BitsFormat, DigitsFormat, NumberFormat
from protocol.dlt645.clock import DateFormat, MeterTime, TimeFormat
from protocol.dlt645.credentials import Password
from protocol.dlt645.frame import BROADCAST, MAX_DATA, Address, Frame, Function
from protocol.dlt645.messages import (
    BroadcastTime,
    ControlReply,
    ControlRequest,
    ErrorReply,
    PayloadError,
    ReadAddressReply,
    ReadAddressRequest,
    ReadFollowUpReply,
    ReadFollowUpRequest,
    ReadReply,
    ReadRequest,
    Reply,
    WriteReply,
    WriteRequest,
    decode_request,
)
from protocol.dlt645.meter_map import Dlt645Map, Dlt645Point
from protocol.dlt645.terms import ControlCommand, ErrorWord
from protocol.errors import DecodeError

DEFAULT_PASSWORD = Password(0x02, b"\x00\x00\x00")
DATE_DI = 0x04000101
TIME_DI = 0x04000102


def matches(pattern: Address, address: Address) -> bool:
    """Whether a request to ``pattern`` is for ``address`` (AA bytes are wildcards)."""
    return all(p in (a, 0xAA) for p, a in zip(pattern.raw, address.raw, strict=True))


@dataclass(slots=True)
class Dlt645Meter:
    """One simulated 645 meter: physics plus the state remote control drives."""

    model: MeterModel
    address: Address
    password: Password = DEFAULT_PASSWORD
    relay_command_open: bool = False
    protected: bool = False
    alarm: bool = False
    clock_offset: float = 0.0  # its wall clock = simulated UTC + this many seconds
    #: the rest of a long reply, waiting for 12H: (identifier, chunks not yet sent)
    pending: tuple[int, list[bytes]] | None = None
    commands: list[str] = field(default_factory=list)  # accepted 1CH commands, for state

    def wall_time(self, now: float) -> MeterTime:
        return MeterTime.from_datetime(datetime.fromtimestamp(now + self.clock_offset, UTC))

    def set_clock(self, when: MeterTime, now: float) -> None:
        """Its clock reads ``when`` from now on (the meter keeps the wall time it is given)."""
        self.clock_offset = when.to_datetime(UTC).timestamp() - now

    @property
    def close_allowed(self) -> bool:
        """Close allowed (1BH) and waiting for the customer's button."""
        return not self.model.relay_closed and not self.relay_command_open

    def press_button(self, now: float) -> None:
        """The customer holds the button: the relay closes if closing is allowed."""
        self.model.advance(now)
        if self.close_allowed:
            self.model.set_relay(True, now)

    def flags(self) -> dict[str, bool]:
        """The status bits the simulator drives, by the names the models give them."""
        return {
            "relay_open": not self.model.relay_closed,
            "relay_command_open": self.relay_command_open,
            "alarm": self.alarm,
            "protected": self.protected,
            "reverse_energy": self.model.reverse,
        }

    def status_word(self, point: Dlt645Point) -> int:
        flags = self.flags()
        return sum(1 << i for i, name in enumerate(point.bits) if flags.get(name, False))

    def state(self, now: float) -> dict[str, Any]:
        self.model.advance(now)
        wall = self.wall_time(now)
        return {
            "address": self.address.digits,
            "relay_command_open": self.relay_command_open,
            "close_allowed": self.close_allowed,
            "protected": self.protected,
            "alarm": self.alarm,
            "clock": f"{wall.year:04d}-{wall.month:02d}-{wall.day:02d}T"
            f"{wall.hour:02d}:{wall.minute:02d}:{wall.second:02d}",
            "flags": sorted(name for name, on in self.flags().items() if on),
            "commands": list(self.commands),
        }


def point_bytes(model_map: Dlt645Map, point: Dlt645Point, meter: Dlt645Meter, now: float) -> bytes:
    """A point's data bytes now (the meter was advanced to ``now``)."""
    fmt = point.format
    if isinstance(fmt, BitsFormat):
        return fmt.encode(meter.status_word(point))
    if isinstance(fmt, DateFormat):
        return meter.wall_time(now).date_bytes()
    if isinstance(fmt, TimeFormat):
        return meter.wall_time(now).time_bytes()
    if isinstance(fmt, DigitsFormat):
        return fmt.encode(meter.address.digits[-fmt.digits :].rjust(fmt.digits, "0"))
    found = measurement(model_map.name, point.name, point.unit)
    if found is None:
        return fmt.encode(0)
    quantity, factor = found
    three_phase = model_map.has("current_l2") or model_map.has("active_power_l2")
    raw = quantities(meter.model, three_phase)[quantity]
    scaled_factor = factor * 10**fmt.decimals
    value = round_div(raw * scaled_factor.numerator, scaled_factor.denominator)
    return _fit(fmt, value)


def _fit(fmt: NumberFormat, value: int) -> bytes:
    """Energy registers roll over as real ones do; other values stay within the format."""
    if not fmt.signed and value >= 0:
        return fmt.encode(value % fmt.limit)
    return fmt.encode(max(-fmt.limit + 1, min(fmt.limit - 1, value)))


def _read(model_map: Dlt645Map, meter: Dlt645Meter, di: int, now: float, max_data: int) -> Reply:
    point = model_map.by_di(di)
    if point is None:
        return ErrorReply(meter.address, Function.READ, ErrorWord.NO_DATA)
    meter.model.advance(now)
    data = point_bytes(model_map, point, meter, now)
    room = max_data - 4
    if len(data) <= room:
        meter.pending = None
        return ReadReply(meter.address, di, data)
    first, rest = data[:room], data[room:]
    chunks = [rest[i : i + room - 1] for i in range(0, len(rest), room - 1)]
    meter.pending = (di, chunks)
    return ReadReply(meter.address, di, first, follows=True)


def _follow_up(meter: Dlt645Meter, request: ReadFollowUpRequest) -> Reply:
    if meter.pending is None or meter.pending[0] != request.di or not meter.pending[1]:
        return ErrorReply(meter.address, Function.READ_FOLLOW_UP, ErrorWord.NO_DATA)
    di, chunks = meter.pending
    chunk = chunks.pop(0)
    if not chunks:
        meter.pending = None
    return ReadFollowUpReply(meter.address, di, chunk, request.seq, follows=bool(chunks))


def _authorised(meter: Dlt645Meter, password: Password) -> bool:
    return password == meter.password


def _control(
    meter: Dlt645Meter, request: ControlRequest, now: float, relay_actuates: bool
) -> Reply:
    refused = ErrorReply(meter.address, Function.CONTROL, ErrorWord.OTHER)
    if not _authorised(meter, request.password):
        return ErrorReply(meter.address, Function.CONTROL, ErrorWord.PASSWORD)
    if request.valid_until < meter.wall_time(now):
        return refused  # the command has expired on the meter's clock
    model = meter.model
    match request.command:
        case ControlCommand.TRIP:
            if meter.protected:
                return refused  # protected supply refuses every trip
            meter.relay_command_open = True
            if relay_actuates:
                model.set_relay(False, now)
        case ControlCommand.ALLOW_CLOSE:
            meter.relay_command_open = False  # the customer's button closes the relay
        case ControlCommand.CLOSE:
            meter.relay_command_open = False
            if relay_actuates:
                model.set_relay(True, now)
        case ControlCommand.ALARM:
            meter.alarm = True
        case ControlCommand.ALARM_OFF:
            meter.alarm = False
        case ControlCommand.PROTECT:
            meter.protected = True
        case ControlCommand.PROTECT_OFF:
            meter.protected = False
    model.advance(now)
    meter.commands.append(request.command.name.lower())
    return ControlReply(meter.address)


def _write(meter: Dlt645Meter, request: WriteRequest, now: float) -> Reply:
    if not _authorised(meter, request.password):
        return ErrorReply(meter.address, Function.WRITE, ErrorWord.PASSWORD)
    wall = meter.wall_time(now)
    try:
        if request.di == DATE_DI and len(request.payload) == 4:
            probe = MeterTime.from_date_and_time(request.payload, wall.time_bytes())
        elif request.di == TIME_DI and len(request.payload) == 3:
            probe = MeterTime.from_date_and_time(wall.date_bytes(), request.payload)
        else:
            return ErrorReply(meter.address, Function.WRITE, ErrorWord.OTHER)
    except DecodeError:
        return ErrorReply(meter.address, Function.WRITE, ErrorWord.OTHER)
    meter.set_clock(probe, now)
    return WriteReply(meter.address)


def answer(
    model_map: Dlt645Map,
    meters: list[Dlt645Meter],
    frame: Frame,
    now: float,
    *,
    relay_actuates: bool = True,
    max_data: int = MAX_DATA,
) -> list[tuple[Dlt645Meter, Frame]]:
    """Each meter's reply to one request frame (none for a broadcast, another meter's
    address or a reply overheard on the bus)."""
    if frame.is_reply:
        return []
    if frame.address == BROADCAST:
        if frame.control == Function.BROADCAST_TIME:
            try:
                when = BroadcastTime.from_frame(frame).when
            except PayloadError:
                return []
            for meter in meters:
                meter.set_clock(when, now)
        return []
    targets = [m for m in meters if matches(frame.address, m.address)]
    out: list[tuple[Dlt645Meter, Frame]] = []
    for meter in targets:
        reply = _answer_one(model_map, meter, frame, now, relay_actuates, max_data)
        out.append((meter, reply.to_frame()))
    return out


def _answer_one(  # noqa: PLR0917 - private, called once
    model_map: Dlt645Map,
    meter: Dlt645Meter,
    frame: Frame,
    now: float,
    relay_actuates: bool,
    max_data: int,
) -> Reply:
    try:
        request = decode_request(frame)
    except PayloadError:
        return ErrorReply(meter.address, frame.function, ErrorWord.OTHER)
    match request:
        case ReadRequest(di=di):
            return _read(model_map, meter, di, now, max_data)
        case ReadFollowUpRequest():
            return _follow_up(meter, request)
        case ReadAddressRequest():
            return ReadAddressReply(meter.address)
        case WriteRequest():
            return _write(meter, request, now)
        case ControlRequest():
            return _control(meter, request, now, relay_actuates)
    return ErrorReply(meter.address, frame.function, ErrorWord.OTHER)


def is_write(frame: Frame) -> bool:
    """Requests that change the meter (the ``relay_stuck`` fault applies to them)."""
    return frame.control in (Function.WRITE, Function.CONTROL)
