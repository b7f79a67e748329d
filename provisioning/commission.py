"""`meter-provision commission METER`: on site, prove an enrolled meter is the one enrolled
and that its relay and keypad work, then keep the report.

The report is stored as a ``commissioned`` event through the store's outbox, in one
transaction, so the gateway sends it to the headend (``meters/{id}/event``) like any
other event when it next runs. It refuses to run while a gateway holds the store's lock
(an RS-485 line has one master, and a running gateway would consume the test token
itself), and holds that lock itself meanwhile, so no gateway starts under it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import JsonValue

from gateway.public import (
    GatewayConfig,
    IOFailure,
    MeterIO,
    MeterIOError,
    MeterSnapshot,
    ModbusPort,
    Publish,
    RelayTarget,
    RtuBus,
    StoredMeter,
    dlt645_port_for,
    parse_relay_output,
)
from protocol import modbus
from protocol.cli import Subcommands, add_config_option
from protocol.codec import decode
from protocol.errors import DecodeError, MapError
from protocol.regmap import Capability, RegisterMap, load_map
from protocol.tokens.keypad import group_digits, issue_keypad, verify_keypad
from protocol.tokens.keys import MeterKey
from protocol.tokens.replay import ReplayWindow
from protocol.tokens.results import Accepted
from protocol.tokens.token_class import MAX_MANAGEMENT_VALUE, TokenClass
from provisioning.errors import ProvisionError
from provisioning.events import COMMISSIONED
from provisioning.interrupt import Interrupted, run_async
from provisioning.site import (
    bus_of,
    load_extras,
    load_site_config,
    lock_store,
    open_store,
    port_for,
)

EXAMPLE = """\
example:
  meter-provision commission PE1-000042 --config /etc/prepaid-edge/gateway.toml
  (stop the gateway service first; it asks before switching the relay unless --yes)
"""


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


def add_commission_command(sub: Subcommands) -> None:
    p = sub.add_parser(
        "commission",
        help="check an enrolled meter on site: serial, relay, keypad; store the report",
        description="Read the meter, check its serial, toggle its relay with read-back, check "
        "the keypad path with a test token; print, store and queue a pass/fail report.",
        epilog=EXAMPLE,
    )
    p.add_argument("meter", help="enrolled meter id")
    add_config_option(p)
    p.add_argument("--yes", action="store_true", help="switch the relay without asking")
    p.add_argument("--skip-keypad", action="store_true", help="no keypad test (report says so)")
    p.add_argument(
        "--keypad-timeout", type=float, default=180.0, help="seconds to wait for the test token"
    )
    p.set_defaults(func=run_commission)


async def _read_line() -> str:
    """One line from stdin without blocking the event loop, so Ctrl-C at a prompt stops
    the command at once (a blocking read would hold the loop until Enter)."""
    if sys.stdin is None or sys.stdin.closed:
        return ""
    fd = sys.stdin.fileno()
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    data = b""
    try:
        loop.add_reader(fd, lambda: None if ready.done() else ready.set_result(None))
    except (OSError, ValueError):  # a regular file: reading it never blocks
        return sys.stdin.readline()
    try:
        while not data.endswith(b"\n"):
            await ready
            ready = loop.create_future()
            chunk = os.read(fd, 1)  # one byte: nothing after the line is taken from stdin
            if not chunk:
                break
            data += chunk
    finally:
        loop.remove_reader(fd)
    return data.decode(errors="replace")


async def _ask(question: str) -> bool:
    print(question, end=" ", file=sys.stderr, flush=True)
    try:
        answer = (await _read_line()).strip().lower()
    except asyncio.CancelledError:
        print(file=sys.stderr)  # end the prompt's line
        raise
    return answer in {"y", "yes"}


async def _read_serial(port: ModbusPort, regmap: RegisterMap, unit: int) -> str:
    p = regmap.point("serial_number")
    regs = await port.request(modbus.read_input(unit, p.address, p.end - p.address))
    try:
        value = decode(p, regs)
    except DecodeError as exc:
        raise MeterIOError(unit, IOFailure.GARBLED, str(exc)) from exc
    return str(value).rstrip("\x00").strip()


async def _check_serial(
    port: ModbusPort, regmap: RegisterMap, unit: int, expected: str | None
) -> Check:
    if not regmap.has("serial_number"):
        return Check("serial", expected is None, "the map has no serial number register")
    serial = await _read_serial(port, regmap, unit)
    if expected is None:
        return Check("serial", True, f"read {serial} (no expected serial enrolled)")
    if serial != expected:
        return Check("serial", False, f"read {serial}, enrolled {expected}: wrong meter?")
    return Check("serial", True, f"{serial} matches")


async def _check_relay(relay: RelayTarget, what: str = "") -> Check:
    """Switch to the other position and back, reading back each time; ends as it began,
    also when the operator interrupts it half way (the supply is put back). ``what``
    names a relay module's coil in the report."""
    start = await relay.read()
    seen: list[str] = []
    try:
        for want in (not start, start):
            await relay.write(want)
            got = await relay.read()
            seen.append(f"{'closed' if want else 'open'}->{'closed' if got else 'open'}")
            if got != want:
                return Check("relay", False, f"{what}read-back mismatch: {', '.join(seen)}")
    except asyncio.CancelledError:
        try:
            await relay.write(start)
        except MeterIOError as exc:
            where = "closed (supply on)" if start else "open"
            print(f"warning: the relay could not be put back {where}: {exc}", file=sys.stderr)
        raise
    return Check("relay", True, what + ", ".join(seen))


async def _check_keypad(  # noqa: PLR0917  (one call site, each part named)
    io: MeterIO,
    port: ModbusPort,
    meter: StoredMeter,
    first: MeterSnapshot,
    wait_s: float,
    say: Callable[[str], None],
) -> Check:
    """The engineer types a TEST-class token made with the meter's enrolled key; the
    gateway's verifier must read it back from the meter and accept it as this meter's."""
    record = meter.record
    key = MeterKey(record.meter_key)
    nonce = secrets.randbelow(MAX_MANAGEMENT_VALUE + 1)
    token = issue_keypad(key, record.meter_id, record.key_epoch, TokenClass.TEST, 0, nonce)
    say(f"type this test token on the meter's keypad: {group_digits(token)}")
    start_seq = first.keypad_seq
    deadline = time.monotonic() + wait_s
    while True:
        snap = await io.read(port, record.unit_id)
        if (
            "keypad_pending" in snap.flags
            and snap.keypad_seq != start_seq
            and snap.keypad_digits is not None
        ):
            break
        if time.monotonic() > deadline:
            return Check("keypad", False, f"no keypad entry within {wait_s:g} s")
        await asyncio.sleep(0.25)
    assert snap.keypad_seq is not None
    assert snap.keypad_digits is not None
    await io.write_points(port, record.unit_id, {"keypad_ack": snap.keypad_seq})
    verdict = verify_keypad(
        snap.keypad_digits, record.meter_id, key, ReplayWindow(record.key_epoch)
    )
    if not isinstance(verdict, Accepted):
        return Check("keypad", False, f"entry {snap.keypad_digits} refused: {verdict.reason}")
    if verdict.token_class is not TokenClass.TEST or verdict.amount != nonce:
        return Check("keypad", False, "a valid token, but not the test token shown")
    return Check(
        "keypad", True, f"test token read back and verified (keypad_seq {snap.keypad_seq})"
    )


async def commission_meter(
    meter: StoredMeter,
    port: ModbusPort,
    *,
    expected_serial: str | None,
    switch_relay: Callable[[], Awaitable[bool]],
    keypad_timeout: float | None,
    say: Callable[[str], None],
    relay_module: RelayTarget | None = None,
) -> list[Check]:
    """Every check, in order. An unreachable meter raises :class:`ProvisionError` before
    anything is switched. A meter without a relay of its own is switched through
    ``relay_module``, the coil enrolled as its ``relay_output``."""
    record = meter.record
    try:
        regmap = load_map(record.map_name)
    except MapError as exc:
        raise ProvisionError(f"{record.meter_id}: {exc}") from None
    io = MeterIO(regmap)
    try:
        first = await io.read(port, record.unit_id)
    except MeterIOError as exc:
        raise ProvisionError(
            f"{record.meter_id} on {record.bus} unit {record.unit_id} is unreachable: {exc}"
        ) from None
    checks = [
        Check("read", True, f"{first.energy_import_wh} Wh, {first.power_w} W, {first.voltage_v} V")
    ]
    try:
        checks.append(await _check_serial(port, regmap, record.unit_id, expected_serial))
        if Capability.RELAY in regmap.capabilities:
            relay: RelayTarget | None = RelayTarget(
                port, record.unit_id, regmap.point("relay").address
            )
            what = ""
        else:
            relay, what = relay_module, f"relay module {record.relay_output}: "
        if relay is None:
            checks.append(Check("relay", False, "the map has no relay and no relay_output"))
        elif await switch_relay():
            checks.append(await _check_relay(relay, what))
        else:
            checks.append(Check("relay", False, "not tested: the operator declined"))
        if keypad_timeout is None:
            checks.append(Check("keypad", False, "not tested: --skip-keypad"))
        elif Capability.KEYPAD not in regmap.capabilities:
            checks.append(Check("keypad", True, "the meter has no keypad (online tokens only)"))
        else:
            checks.append(await _check_keypad(io, port, meter, first, keypad_timeout, say))
    except MeterIOError as exc:
        checks.append(Check("communication", False, f"lost during the checks: {exc}"))
    return checks


def report_body(checks: list[Check]) -> dict[str, JsonValue]:
    passed = all(c.ok for c in checks)
    details: dict[str, JsonValue] = {
        "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks]
    }
    return {
        "kind": "event",
        "event": COMMISSIONED,
        "reason": "pass" if passed else "fail",
        "details": details,
    }


def _find(config_meters: list[StoredMeter], meter_id: str) -> StoredMeter:
    for m in config_meters:
        if m.record.meter_id == meter_id:
            return m
    raise ProvisionError(f"meter {meter_id} is not enrolled")


def store_report(config: GatewayConfig, meter_id: str, body: dict[str, JsonValue]) -> None:
    """Commit the report as an event (event log + outbox) in one transaction. The store is
    opened afresh, so the state and ``seq`` written are the latest committed ones."""
    with open_store(config) as store:
        meter = _find(store.load_meters(), meter_id)
        store.apply(meter.state, [Publish(meter_id, "event", body)], datetime.now(UTC))


#: why commission refuses to run beside a gateway
BESIDE_A_GATEWAY = (
    "two masters on one RS-485 bus collide, and the gateway would take the test token"
)


def run_commission(args: argparse.Namespace) -> int:
    config = load_site_config(args.config)
    with lock_store(config, "commission", BESIDE_A_GATEWAY):
        return _commission(args, config)


def _commission(args: argparse.Namespace, config: GatewayConfig) -> int:
    extras = load_extras(config).get(args.meter, {})
    with open_store(config) as store:
        meter = _find(store.load_meters(), args.meter)
    bus = bus_of(config, meter.record.bus)

    async def switch_relay() -> bool:
        return bool(args.yes) or await _ask(
            f"switch the supply of {args.meter} off and on again now? [y/N]"
        )

    def say(line: str) -> None:
        print(line, flush=True)

    if isinstance(bus, RtuBus) and bus.protocol == "dlt645":
        # Imported here: provisioning.dlt645_site takes Check from this module.
        from provisioning.dlt645_site import commission_dlt645  # noqa: PLC0415

        dlt645_port = dlt645_port_for(bus)

        async def run_dlt645() -> list[Check]:
            try:
                return await commission_dlt645(
                    meter,
                    dlt645_port,
                    expected_serial=extras.get("expected_serial"),
                    switch_relay=switch_relay,
                )
            finally:
                await dlt645_port.close()

        return _report(args, config, run_dlt645)
    port = port_for(bus)
    ports = [port]
    relay_module: RelayTarget | None = None
    if meter.record.relay_output is not None:
        try:
            module_bus, unit, coil = parse_relay_output(meter.record.relay_output)
        except ValueError as exc:
            raise ProvisionError(f"{args.meter}: {exc}") from None
        if module_bus == meter.record.bus:
            module_port = port  # one master per line: the same port
        else:
            module_port = port_for(bus_of(config, module_bus))
            ports.append(module_port)
        relay_module = RelayTarget(module_port, unit, coil, external=True)

    async def run() -> list[Check]:
        try:
            return await commission_meter(
                meter,
                port,
                expected_serial=extras.get("expected_serial"),
                switch_relay=switch_relay,
                keypad_timeout=None if args.skip_keypad else args.keypad_timeout,
                say=say,
                relay_module=relay_module,
            )
        finally:
            for each in ports:
                await each.close()

    return _report(args, config, run)


def _report(
    args: argparse.Namespace,
    config: GatewayConfig,
    run: Callable[[], Coroutine[Any, Any, list[Check]]],
) -> int:
    """Run the checks, store the report and print it; the exit code."""
    try:
        checks = run_async(run)
    except Interrupted as exc:
        exc.kept = "no report stored"
        raise
    body = report_body(checks)
    store_report(config, args.meter, body)
    for c in checks:
        print(f"{'PASS' if c.ok else 'FAIL'}  {c.name:<8} {c.detail}")
    print(
        f"{args.meter}: commissioning {'PASSED' if body['reason'] == 'pass' else 'FAILED'}"
        " (stored; the gateway sends it to the headend)"
    )
    return 0 if body["reason"] == "pass" else 1
