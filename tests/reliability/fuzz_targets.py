"""atheris (coverage-guided) fuzz targets for the parsers that face the outside world:
Modbus RTU and TCP replies (alone and through the master sessions), DL/T 645 byte streams, keypad digits and online tokens. Each target accepts only a
typed rejection; anything else is a crash that atheris reports with its input.

Run one: ``python tests/reliability/fuzz_targets.py modbus -runs=100000``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from datetime import UTC, datetime

import atheris

with atheris.instrument_imports():
    from meter_sim.dlt645_meter import Dlt645Meter, answer
    from meter_sim.physics import MeterModel
    from protocol.dlt645.bcd import BitsFormat, DigitsFormat, NumberFormat
    from protocol.dlt645.clock import MeterTime
    from protocol.dlt645.frame import Address, Deframer
    from protocol.dlt645.messages import decode_reply, decode_request
    from protocol.dlt645.meter_map import load_dlt645_map
    from protocol.errors import DecodeError
    from protocol.modbus import (
        ExceptionReplyError,
        ReplyReceived,
        RequestFailed,
        RtuMaster,
        TcpMaster,
        parse_mbap_header,
        parse_reply_pdu,
        parse_rtu_reply,
        read_coils,
        read_input,
        write_coil,
    )
    from protocol.tokens.keypad import verify_keypad
    from protocol.tokens.keys import derive_meter_key
    from protocol.tokens.online import verify_online
    from protocol.tokens.replay import ReplayWindow
    from protocol.tokens.results import Accepted, Rejected

KEY = derive_meter_key(bytes(32), "PE1-000001", 0)
WINDOW = ReplayWindow.fresh(0)
NOW = datetime(2026, 11, 28, tzinfo=UTC)
REQUESTS = [read_input(1, 0, 22), read_input(7, 16, 1), read_coils(1, 0, 1), write_coil(3, 0, True)]


def modbus(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    request = REQUESTS[fdp.ConsumeIntInRange(0, len(REQUESTS) - 1)]
    raw = fdp.ConsumeBytes(fdp.remaining_bytes())
    for parse in (parse_rtu_reply, parse_reply_pdu):
        try:
            values = parse(request, raw)
        except (DecodeError, ExceptionReplyError):
            continue
        assert isinstance(values, tuple)
    with contextlib.suppress(DecodeError):
        parse_mbap_header(raw[:7])
    modbus_sessions(raw)


def modbus_sessions(raw: bytes) -> None:
    """Any bytes from the peer end every request in flight in exactly one event."""
    tcp = TcpMaster(timeout=1.0)
    handles = [tcp.send_request(r, 0.0) for r in REQUESTS]
    for i in range(0, len(raw), 11):
        tcp.receive_data(raw[i : i + 11], 0.5)
    tcp.handle_timer(1.0)
    assert sorted(_ended(tcp)) == handles
    rtu = RtuMaster(baud=115200, timeout=0.1)
    handle = rtu.send_request(REQUESTS[0], 0.0)
    rtu.receive_data(raw, 0.01)
    rtu.handle_timer(1.0)
    assert _ended(rtu) == [handle]


def _ended(session: TcpMaster | RtuMaster) -> list[int]:
    """The requests the session's events end, one entry per event."""
    return [
        event.handle
        for event in iter(session.next_event, None)
        if isinstance(event, ReplyReceived | RequestFailed)
    ]


DLT645_MODEL = load_dlt645_map("dlt645_three_phase")


def dlt645(data: bytes) -> None:
    """A master's and a meter's view of any bytes on a DL/T 645 line: frames found in them,
    decoded as replies and requests, their values, and a simulated meter's answers."""
    fdp = atheris.FuzzedDataProvider(data)
    meters = [Dlt645Meter(MeterModel(n, 0, 1.767e9), Address.of_number(n)) for n in (1, 2)]
    deframer = Deframer()
    while fdp.remaining_bytes():
        chunk = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 64))
        for frame in deframer.feed(chunk):
            for decode in (decode_reply, decode_request):
                with contextlib.suppress(DecodeError):
                    decode(frame)
            for point in DLT645_MODEL.points:
                fmt = point.format
                if isinstance(fmt, NumberFormat | DigitsFormat | BitsFormat):
                    with contextlib.suppress(DecodeError):
                        fmt.decode(frame.data[: point.size])
            with contextlib.suppress(DecodeError):
                MeterTime.from_bytes(frame.data[:6])
            with contextlib.suppress(DecodeError):
                MeterTime.from_date_and_time(frame.data[:4], frame.data[4:7])
            for _, reply in answer(DLT645_MODEL, meters, frame, 1.767e9, max_data=8):
                assert decode_reply(reply) is not None


def keypad(data: bytes) -> None:
    text = data.decode("latin-1")
    verdict = verify_keypad(text, "PE1-000001", KEY, WINDOW)
    assert isinstance(verdict, Rejected | Accepted)
    assert not isinstance(verdict, Accepted), f"accepted a fuzzed token: {text!r}"


def online(data: bytes) -> None:
    for token in (data, data.decode("latin-1")):
        verdict = verify_online(token, "PE1-000001", {}, WINDOW, NOW)
        assert isinstance(verdict, Rejected), verdict


TARGETS: dict[str, Callable[[bytes], None]] = {
    "modbus": modbus,
    "dlt645": dlt645,
    "keypad": keypad,
    "online": online,
}


def main() -> None:
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
