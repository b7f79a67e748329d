"""`scan` and `commission` on a DL/T 645 bus.

Scan: on a point-to-point link (the engineer's optical head or one meter on the cable),
read address (13H) asks whoever is there; on a shared bus, each configured address is
probed with a read of its energy, with progress, and the model named (a meter that
answers the phase-B voltage is three-phase). Commission: read the meter, check its meter
number against the expected serial if one was enrolled, switch the relay off and on by
remote control (trip 1AH, direct close 1CH) reading status word 3 back each time, and
read its clock. An ESAM meter is read, and its relay check says why it is not switched.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.public import (
    ESAM_REASON,
    NO_CONTROL_REASON,
    Dlt645Credentials,
    Dlt645MeterIO,
    Dlt645Port,
    IOFailure,
    MeterIOError,
    RtuBus,
    StoredMeter,
    command_deadline,
    dlt645_port_for,
    parse_control_secret,
)
from protocol.dlt645.bcd import DigitsFormat
from protocol.dlt645.frame import Address
from protocol.dlt645.meter_map import Dlt645Capability, load_dlt645_map
from protocol.dlt645.terms import ControlCommand
from protocol.errors import MapError
from provisioning.commission import Check
from provisioning.errors import ProvisionError
from provisioning.interrupt import Interrupted, run_async

#: The model a meter gets when it does not answer the three-phase model's phase-B voltage.
SINGLE_PHASE, THREE_PHASE = "dlt645_single_phase", "dlt645_three_phase"


@dataclass(frozen=True, slots=True)
class Found:
    """A DL/T 645 meter that answered."""

    address: Address
    map_name: str
    detail: str


def parse_addresses(text: str) -> list[Address]:
    """``000000000001-000000000032`` or ``201512340001,201512340007``: the addresses to
    probe (a range of at most 1000)."""
    out: list[Address] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        first, dash, last = part.partition("-")
        try:
            low = Address.parse(first.zfill(12)).number
            high = Address.parse(last.zfill(12)).number if dash else low
        except ValueError as exc:
            raise ProvisionError(f"--addresses {text!r}: {exc}") from None
        if high < low or high - low >= 1000:
            raise ProvisionError(f"--addresses {part!r}: low to high, at most 1000 addresses")
        out += [Address.of_number(n) for n in range(low, high + 1)]
    if not out:
        raise ProvisionError("--addresses: give addresses, e.g. 000000000001-000000000032")
    return out


async def identify(port: Dlt645Port, address: Address) -> Found | None:
    """What answers at ``address``: None for silence (a timeout)."""
    single = Dlt645MeterIO(load_dlt645_map(SINGLE_PHASE))
    try:
        snap = await single.read(port, address)
    except MeterIOError as exc:
        if exc.kind is IOFailure.CONNECTION:
            raise ProvisionError(f"cannot reach the bus {port.name}: {exc.cause}") from None
        if exc.kind is IOFailure.TIMEOUT:
            return None
        return Found(address, "unknown", f"answers, but not as the shipped models: {exc.cause}")
    three = load_dlt645_map(THREE_PHASE)
    try:
        await port.read(address, three.point("voltage_l2").di)
        name = THREE_PHASE
    except MeterIOError:
        name = SINGLE_PHASE
    relay = "relay closed" if snap.relay_closed else "relay open"
    return Found(address, name, f"{snap.energy_import_wh} Wh, {relay}")


async def scan_dlt645(
    port: Dlt645Port,
    addresses: Sequence[Address] | None,
    progress: Callable[[int, int, int], None],
) -> list[Found]:
    """The meters found: the one on a point-to-point link (``addresses`` None), or each
    of ``addresses`` that answers; ``progress(done, total, found)`` after each probe."""
    if addresses is None:
        try:
            address = await port.read_address()
        except MeterIOError as exc:
            if exc.kind is IOFailure.CONNECTION:
                raise ProvisionError(f"cannot reach the bus {port.name}: {exc.cause}") from None
            if exc.kind is IOFailure.GARBLED:
                raise ProvisionError(
                    f"{exc.cause}: more than one meter answered read address; on a shared "
                    "bus give --addresses"
                ) from None
            return []
        addresses = [address]
    found: list[Found] = []
    progress(0, len(addresses), 0)
    for i, address in enumerate(addresses, 1):
        hit = await identify(port, address)
        if hit is not None:
            found.append(hit)
        progress(i, len(addresses), len(found))
    return found


def print_found(bus: str, found: Sequence[Found]) -> None:
    if not found:
        print(f"no meter answered on {bus}")
        return
    print(f"{'address':<12}  {'map':<19}  detail")
    for f in found:
        print(f"{f.address.digits:<12}  {f.map_name:<19}  {f.detail}")


def run_dlt645_scan(bus: RtuBus, addresses_text: str | None, timeout: float) -> int:
    """The scan command on a DL/T 645 bus (run from ``scan``'s own entry)."""
    addresses = parse_addresses(addresses_text) if addresses_text else None
    port = dlt645_port_for(bus, timeout)
    found: list[Found] = []
    started = time.monotonic()

    def progress(done: int, total: int, hits: int) -> None:
        bar = "#" * (30 * done // total)
        print(
            f"\r[{bar:<30}] {done}/{total} addresses, {hits} found ",
            end="",
            file=sys.stderr,
            flush=True,
        )

    async def run() -> list[Found]:
        try:
            found[:] = await scan_dlt645(port, addresses, progress)
            return found
        finally:
            await port.close()

    try:
        run_async(run)
    except Interrupted:
        print(file=sys.stderr)
        print_found(bus.name, found)
        raise
    took = time.monotonic() - started
    what = f"{len(addresses)} addresses" if addresses else "read address (13H)"
    print(f"\nscanned {what} in {took:.1f} s", file=sys.stderr)
    print_found(bus.name, found)
    return 0 if found else 1


async def _check_relay(
    io: Dlt645MeterIO, port: Dlt645Port, address: Address, creds: Dlt645Credentials
) -> Check:
    """Trip and close (or close and trip), reading the status word back each time; ends
    as it began, also when interrupted half way. Commands are valid for five minutes on
    the meter's own clock (whatever this laptop's says)."""
    start = await io.read_relay(port, address)
    seen: list[str] = []
    if Dlt645Capability.CLOCK in io.model_map.capabilities:
        deadline = command_deadline((await io.read_clock(port, address)).to_datetime(UTC))
    else:
        deadline = command_deadline(datetime.now().astimezone())

    async def command(closed: bool) -> None:
        which = ControlCommand.CLOSE if closed else ControlCommand.TRIP
        await io.control(port, address, creds, which, deadline)

    try:
        for want in (not start, start):
            await command(want)
            got = await io.read_relay(port, address)
            seen.append(f"{'closed' if want else 'open'}->{'closed' if got else 'open'}")
            if got != want:
                return Check("relay", False, f"read-back mismatch: {', '.join(seen)}")
    except asyncio.CancelledError:
        try:
            await command(start)
        except MeterIOError as exc:
            print(f"warning: the relay could not be put back: {exc}", file=sys.stderr)
        raise
    return Check("relay", True, ", ".join(seen))


async def commission_dlt645(
    meter: StoredMeter,
    port: Dlt645Port,
    *,
    expected_serial: str | None,
    switch_relay: Callable[[], Awaitable[bool]],
) -> list[Check]:
    """Every check, in order; an unreachable meter raises ProvisionError first."""
    record = meter.record
    try:
        io = Dlt645MeterIO(load_dlt645_map(record.map_name))
    except MapError as exc:
        raise ProvisionError(f"{record.meter_id}: {exc}") from None
    address = Address.of_number(record.unit_id)
    try:
        first = await io.read(port, address)
    except MeterIOError as exc:
        raise ProvisionError(
            f"{record.meter_id} on {record.bus} address {address} is unreachable: {exc}"
        ) from None
    relay = "closed" if first.relay_closed else "open"
    checks = [Check("read", True, f"{first.energy_import_wh} Wh, relay {relay}")]
    model = io.model_map
    try:
        if model.has("meter_number"):
            (raw,) = (await io.read_points(port, address, ["meter_number"])).values()
            fmt = model.point("meter_number").format
            number = fmt.decode(raw) if isinstance(fmt, DigitsFormat) else raw.hex()
            ok = expected_serial is None or number == expected_serial
            detail = f"meter number {number}" + (
                "" if expected_serial is None else f", enrolled {expected_serial}"
            )
            checks.append(Check("serial", ok, detail))
        creds = parse_control_secret(record.control_secret) if record.control_secret else None
        if creds is None:
            why = ESAM_REASON if record.control_secret else NO_CONTROL_REASON
            checks.append(Check("relay", False, why))
        elif Dlt645Capability.RELAY not in model.capabilities:
            checks.append(Check("relay", False, "the model has no relay"))
        elif await switch_relay():
            checks.append(await _check_relay(io, port, address, creds))
        else:
            checks.append(Check("relay", False, "not tested: the operator declined"))
        if Dlt645Capability.CLOCK in model.capabilities:
            clock = await io.read_clock(port, address)
            checks.append(Check("clock", True, f"reads {clock.to_datetime(UTC):%F %T}"))
        checks.append(Check("keypad", True, "no keypad (DL/T 645: online tokens only)"))
    except MeterIOError as exc:
        checks.append(Check("communication", False, f"lost during the checks: {exc}"))
    return checks
