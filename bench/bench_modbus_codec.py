"""The Modbus frame codec per reading: ours (:mod:`protocol.modbus`) beside pymodbus 3.16's
public PDU and framer API doing the same work, in the same process and run.

One reading is the gateway's PE-1 poll (input registers 1..22 of one unit): the master
frames the request and checks and decodes the reply; the simulator takes the request
out of the byte stream and frames its reply. Each side is timed for Modbus TCP (MBAP)
and RTU (CRC-16). The figure that decides is the master's CPU per reading against the
gateway's whole budget (0.2 CPU-s per 1,000 readings, i.e. 200 µs a reading).
Plain script, run on purpose, never collected by pytest:

    .venv/bin/python bench/bench_modbus_codec.py [--seconds 0.5] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import struct
import time
from collections.abc import Callable

from pymodbus.framer import FramerRTU, FramerSocket
from pymodbus.pdu import DecodePDU
from pymodbus.pdu.register_message import (
    ReadInputRegistersRequest,
    ReadInputRegistersResponse,
)

from protocol.modbus import (
    MbapReader,
    RtuReader,
    mbap_frame,
    parse_mbap_header,
    parse_reply_pdu,
    parse_rtu_reply,
    read_input,
    rtu_frame,
)

UNIT, TID, START, COUNT = 7, 0x1234, 1, 22
REGS = [(37 * i + 11) & 0xFFFF for i in range(COUNT)]
#: The gateway's whole CPU budget per reading (issue 17's target), in µs.
BUDGET_US = 200.0


def _our_reply_pdu() -> bytes:
    return bytes((4, 2 * COUNT)) + struct.pack(f">{COUNT}H", *REGS)


def ours_master_tcp() -> Callable[[], object]:
    request = read_input(UNIT, START, COUNT)
    reply = mbap_frame(TID, UNIT, _our_reply_pdu())

    def one() -> object:
        mbap_frame(TID, UNIT, request.pdu())
        tid, length, unit = parse_mbap_header(reply[:7])
        assert (tid, unit, length) == (TID, UNIT, request.reply_pdu_length())
        return parse_reply_pdu(request, reply[7:])

    return one


def pymodbus_master_tcp() -> Callable[[], object]:
    framer = FramerSocket(DecodePDU(is_server=False))
    reply = framer.buildFrame(
        ReadInputRegistersResponse(registers=REGS, dev_id=UNIT, transaction_id=TID)
    )

    def one() -> object:
        request = ReadInputRegistersRequest(
            address=START, count=COUNT, dev_id=UNIT, transaction_id=TID
        )
        framer.buildFrame(request)
        used, pdu = framer.handleFrame(reply, UNIT, TID)
        assert used == len(reply)
        assert pdu is not None
        return pdu.registers

    return one


def ours_master_rtu() -> Callable[[], object]:
    request = read_input(UNIT, START, COUNT)
    reply = rtu_frame(UNIT, _our_reply_pdu())

    def one() -> object:
        rtu_frame(UNIT, request.pdu())
        return parse_rtu_reply(request, reply)

    return one


def pymodbus_master_rtu() -> Callable[[], object]:
    framer = FramerRTU(DecodePDU(is_server=False))
    reply = framer.buildFrame(ReadInputRegistersResponse(registers=REGS, dev_id=UNIT))

    def one() -> object:
        framer.buildFrame(ReadInputRegistersRequest(address=START, count=COUNT, dev_id=UNIT))
        used, pdu = framer.handleFrame(reply, UNIT, 0)
        assert used == len(reply)
        assert pdu is not None
        return pdu.registers

    return one


def ours_server_tcp() -> Callable[[], object]:
    reader = MbapReader()
    request = mbap_frame(TID, UNIT, read_input(UNIT, START, COUNT).pdu())
    data = _our_reply_pdu()[2:]

    def one() -> object:
        ((tid, unit, pdu),) = reader.feed(request)
        fn, address, count = struct.unpack(">BHH", pdu)
        assert (address, count) == (START, COUNT)
        return mbap_frame(tid, unit, bytes((fn, 2 * count)) + data)

    return one


def pymodbus_server_tcp() -> Callable[[], object]:
    framer = FramerSocket(DecodePDU(is_server=True))
    request = framer.buildFrame(
        ReadInputRegistersRequest(address=START, count=COUNT, dev_id=UNIT, transaction_id=TID)
    )

    def one() -> object:
        _, pdu = framer.handleFrame(request, 0, 0)
        assert pdu is not None
        assert pdu.count == COUNT
        reply = ReadInputRegistersResponse(
            registers=REGS, dev_id=pdu.dev_id, transaction_id=pdu.transaction_id
        )
        return framer.buildFrame(reply)

    return one


def ours_server_rtu() -> Callable[[], object]:
    reader = RtuReader()
    request = rtu_frame(UNIT, read_input(UNIT, START, COUNT).pdu())
    data = _our_reply_pdu()[2:]

    def one() -> object:
        (frame,) = reader.feed(request)
        fn, address, count = struct.unpack(">BHH", frame[1:])
        assert (address, count) == (START, COUNT)
        return rtu_frame(frame[0], bytes((fn, 2 * count)) + data)

    return one


def pymodbus_server_rtu() -> Callable[[], object]:
    framer = FramerRTU(DecodePDU(is_server=True))
    request = framer.buildFrame(ReadInputRegistersRequest(address=START, count=COUNT, dev_id=UNIT))

    def one() -> object:
        _, pdu = framer.handleFrame(request, 0, 0)
        assert pdu is not None
        assert pdu.count == COUNT
        return framer.buildFrame(ReadInputRegistersResponse(registers=REGS, dev_id=pdu.dev_id))

    return one


def microseconds(make: Callable[[], Callable[[], object]], seconds: float, repeats: int) -> float:
    """The median over ``repeats`` rounds of µs per call (each round about ``seconds``)."""
    one = make()
    n = 1
    while True:  # calibrate a round
        t0 = time.perf_counter()
        for _ in range(n):
            one()
        if time.perf_counter() - t0 >= seconds / 4:
            break
        n *= 2
    n = max(1, int(n * seconds / (time.perf_counter() - t0)))
    rounds = []
    for _ in range(repeats):
        t0 = time.process_time()
        for _ in range(n):
            one()
        rounds.append((time.process_time() - t0) / n * 1e6)
    return statistics.median(rounds)


CASES = {
    "master, Modbus TCP": (ours_master_tcp, pymodbus_master_tcp),
    "master, RTU": (ours_master_rtu, pymodbus_master_rtu),
    "server, Modbus TCP": (ours_server_tcp, pymodbus_server_tcp),
    "server, RTU": (ours_server_rtu, pymodbus_server_rtu),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="length of one round")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"Modbus codec, one PE-1 reading ({COUNT} registers), CPU µs per reading (median):")
    for name, (ours, theirs) in CASES.items():
        a = microseconds(ours, args.seconds, args.repeats)
        b = microseconds(theirs, args.seconds, args.repeats)
        print(
            f"  {name:<20} ours {a:6.2f} µs   pymodbus 3.16 {b:6.2f} µs   ({b / a:4.1f}x; "
            f"+{b - a:5.1f} µs = {100 * (b - a) / BUDGET_US:4.1f}% of the gateway's "
            f"{BUDGET_US:.0f} µs budget per reading)"
        )


if __name__ == "__main__":
    main()
