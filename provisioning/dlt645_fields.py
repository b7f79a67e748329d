"""Enrolment fields of a DL/T 645 meter: its 12-digit address (instead of a Modbus unit
id), its model, and its remote-control secret (password and operator code, or ``esam``
for a meter whose commands only the utility's security module can make). The secret goes
to the store, which is owner-only like the meter keys beside it."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.public import ESAM, GatewayConfig, MeterRecord, RtuBus, control_secret
from protocol.dlt645.frame import Address
from protocol.dlt645.meter_map import Dlt645Capability, load_dlt645_map
from protocol.errors import MapError
from provisioning.errors import ProvisionError

#: The shipped model a DL/T 645 meter gets unless the enrolment names one.
DEFAULT_MAP = "dlt645_single_phase"


class Dlt645FieldError(ProvisionError):
    """One field of one DL/T 645 meter is wrong (``enrol`` reports it as its FieldError)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def is_dlt645_bus(config: GatewayConfig, bus: str) -> bool:
    return any(
        isinstance(b, RtuBus) and b.protocol == "dlt645" and b.name == bus for b in config.buses
    )


def parse_address(text: str) -> int:
    """A meter's 12-digit address (as on its nameplate) as the number the store keeps."""
    try:
        address = Address.parse(text)
    except ValueError as exc:
        raise Dlt645FieldError("address", str(exc)) from None
    if not address.is_bcd:
        raise Dlt645FieldError("address", f"{text!r}: a meter's own address has no wildcards")
    return address.number


def plan_dlt645_record(
    fields: Mapping[str, str],
    meter_id: str,
    bus: str,
    key: bytes,
    epoch: int,
    *,
    secret: str | None = None,
) -> MeterRecord:
    """The record of a meter on a DL/T 645 bus; ``secret`` stands in for a password not
    given (an update keeping the enrolled one)."""
    text = fields.get("address", "").strip() or fields.get("unit_id", "").strip()
    if not text:
        raise Dlt645FieldError("address", "required on a DL/T 645 bus (12 digits)")
    number = parse_address(text.zfill(12) if text.isdigit() and len(text) < 12 else text)
    map_name = fields.get("map", "").strip() or DEFAULT_MAP
    try:
        model = load_dlt645_map(map_name)
    except MapError as exc:
        raise Dlt645FieldError("map", str(exc)) from None
    if fields.get("relay_output", "").strip():
        raise Dlt645FieldError("relay_output", "a DL/T 645 meter is switched by remote control")
    password = fields.get("password", "").strip()
    operator = fields.get("operator_code", "").strip()
    if password.lower() == ESAM:
        secret = ESAM
    elif password:
        try:
            secret = control_secret(password, operator or "00000000")
        except ValueError as exc:
            field = "operator_code" if "operator" in str(exc) else "password"
            raise Dlt645FieldError(field, str(exc)) from None
    elif operator:
        raise Dlt645FieldError("password", "an operator code goes with a password")
    if secret is None and Dlt645Capability.RELAY in model.capabilities:
        raise Dlt645FieldError(
            "password",
            "required to switch a DL/T 645 meter (8 hex digits, level first, e.g. 02000000); "
            "'esam' for a State Grid 2013 meter this gateway reads and bills but cannot switch",
        )
    if Dlt645Capability.RELAY not in model.capabilities:
        raise Dlt645FieldError("map", f"map {map_name} has no relay: refused as prepaid")
    return MeterRecord(meter_id, bus, number, map_name, key, epoch, None, secret)


def where_on_bus(config: GatewayConfig, record: MeterRecord) -> str:
    """``unit 7`` for a Modbus meter, ``address 201512340001`` for a DL/T 645 one."""
    if is_dlt645_bus(config, record.bus):
        return f"address {Address.of_number(record.unit_id).digits}"
    return f"unit {record.unit_id}"
