"""A DL/T 645 reading with measured points, on real sockets: the simulator's values come back in the reading fields rounded as the model's formats say, a point the meter answers with "no such data" is left out and named, data that is not BCD is left out, and a point that times out ends the measured points while the energy already read still makes the reading; the bus reads them every measured_every-th poll of a meter, its meters taking turns so that every round of the bus costs the same, and never asks again for a point the meter refused."""

from __future__ import annotations

import logging

import pytest

from gateway.dlt645_io import Dlt645MeterIO
from gateway.dlt645_port import Dlt645Port
from gateway.store import MeterRecord
from meter_sim.registers import quantities
from protocol.dlt645.bcd import BitsFormat, NumberFormat
from protocol.dlt645.frame import Address, Frame
from protocol.dlt645.messages import ReadReply, ReadRequest
from protocol.dlt645.meter_map import load_dlt645_map
from tests.shell.test_dlt645_port import peer, simulated
from tests.support.dlt645_runtime import bus_runtime

pytestmark = pytest.mark.asyncio

SINGLE = load_dlt645_map("dlt645_single_phase")
THREE = load_dlt645_map("dlt645_three_phase")
A1 = Address.of_number(1)


async def test_measured_points_come_back_rounded_and_a_refused_one_is_left_out() -> None:
    # A three-phase model against single-phase meters: phase B's voltage is "no such data".
    io = Dlt645MeterIO(THREE, measured=["voltage", "voltage_l2", "current", "power_factor"])
    async with simulated() as (sim, port):
        sim.set_load(1, 2300)
        snap, refused = await io.read_with(port, A1, io.measured)
        assert refused == {"voltage_l2"}
        q = quantities(sim.meter(1), three_phase=False)
        assert snap.voltage_v == q["voltage"] / 10  # XXX.X
        assert dict(snap.measured) == {
            "current_a": q["current"] / 1000,  # XXX.XXX
            "power_factor": q["power_factor"] / 1000,  # X.XXX
        }
        assert snap.energy_import_wh > 0
        assert sim.requests_served == 2 + 4  # energy, status, then each measured point once
        plain, none = await io.read_with(port, A1, ())
        assert plain.measured == ()
        assert plain.voltage_v is None
        assert none == frozenset()
        assert sim.requests_served == 6 + 2


async def test_a_measured_point_that_times_out_keeps_the_reading() -> None:
    asked: list[str] = []
    names = {p.di: p.name for p in SINGLE.points}

    def reply(frame: Frame) -> bytes:
        request = ReadRequest.from_frame(frame)
        name = names[request.di]
        asked.append(name)
        if name == "voltage":
            return b""  # silence
        if name == "frequency":
            return ReadReply(request.address, request.di, b"\x1a\x50").to_bytes()  # not BCD
        point = SINGLE.point(name)
        data = BitsFormat().encode(0) if name == "status" else bytes(point.size)
        if isinstance(point.format, NumberFormat) and name == "energy_import":
            data = point.format.encode(120_000)  # 1200.00 kWh
        return ReadReply(request.address, request.di, data).to_bytes()

    io = Dlt645MeterIO(SINGLE, measured=["current", "frequency", "voltage", "power_factor"])
    async with peer(reply) as (device, _):
        port = Dlt645Port("bus", device, baud=9600, timeout=0.15, guard=0.05)
        try:
            snap, refused = await io.read_with(port, A1, io.measured)
        finally:
            await port.close()
    # power_factor, after the silence, is not asked
    assert asked == ["energy_import", "status", "current", "frequency", "voltage"]
    assert refused == frozenset()
    assert snap.energy_import_wh == 1_200_000
    assert snap.relay_closed is True
    assert snap.measured == (("current_a", 0.0),)
    assert snap.voltage_v is None


async def test_the_bus_reads_them_every_nth_poll_and_a_refused_one_never_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "gateway.dlt645_bus")
    async with simulated() as (sim, _):
        runtime = bus_runtime(sim, measured=["voltage", "voltage_l2"], measured_every=2)
        try:
            # A three-phase model on a single-phase meter: phase B's voltage is refused.
            driver, _ = runtime.add(MeterRecord("DLT-1", "dlt-1", 1, "dlt645_three_phase", b"k"))
            served = []
            voltages = []
            for _ in range(5):
                before = sim.requests_served
                snap = await driver.read(runtime.line, 1)
                served.append(sim.requests_served - before)
                voltages.append(snap.voltage_v)
        finally:
            await runtime.close()
    # energy + status every poll; voltage (and once voltage_l2) every second poll
    assert served == [4, 2, 3, 2, 3]
    assert [v is not None for v in voltages] == [True, False, True, False, True]
    assert caplog.text.count("no such data: voltage_l2 (not read again)") == 1


async def test_the_meters_of_a_bus_take_turns() -> None:
    async with simulated(meters=4) as (sim, _):
        runtime = bus_runtime(sim, measured=["voltage", "frequency"], measured_every=3)
        try:
            drivers = [
                runtime.add(MeterRecord(f"DLT-{n}", "dlt-1", n, "dlt645_single_phase", b"k"))[0]
                for n in (1, 2, 3, 4)
            ]
            rounds = []
            served = []
            for _ in range(6):
                before = sim.requests_served
                snaps = [await d.read(runtime.line, n) for n, d in enumerate(drivers, 1)]
                served.append(sim.requests_served - before)
                rounds.append([n for n, s in enumerate(snaps, 1) if s.voltage_v is not None])
        finally:
            await runtime.close()
    # The k-th meter of the bus (from 0) first at its poll k mod 3: no round reads them
    # for every meter at once, the first after the start neither.
    assert rounds == [[1, 4], [2], [3], [1, 4], [2], [3]]
    assert served == [8 + 4, 8 + 2, 8 + 2] * 2
