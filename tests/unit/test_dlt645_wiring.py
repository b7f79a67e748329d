"""What wires DL/T 645 meters into a site is checked before anything runs: a bus's protocol and DL/T 645 settings are validated with errors naming the key (a measured point that fills no reading field names the bus and the point), a DL/T 645 bus that leaves out its line settings gets the DL/T 645 line's (2400 baud 8E1, 1 s), not the Modbus ones, a Modbus bus is unchanged by default, a meter's control secret and a scan's address list parse or are refused with a ValueError or a one-line error (hypothesis), and an enrolment on a DL/T 645 bus is refused by field."""

from __future__ import annotations

import inspect

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import (
    DLT645_MEASURED,
    DLT645_MEASURED_EVERY,
    ConfigError,
    RtuBus,
    parse_config,
)
from gateway.dlt645_bus import dlt645_port_for
from gateway.dlt645_io import ESAM, Dlt645Credentials, control_secret, parse_control_secret
from gateway.dlt645_port import Dlt645Port
from gateway.measured import READING_POINTS
from gateway.store import MeterRecord
from protocol.dlt645.frame import Address
from protocol.dlt645.meter_map import load_dlt645_map
from provisioning.dlt645_fields import Dlt645FieldError, plan_dlt645_record
from provisioning.dlt645_site import parse_addresses
from provisioning.errors import ProvisionError

HEAD = 'gateway_id = "gw"\nstore = "/tmp/gw.db"\n[mqtt]\nbrokers = [{ host = "h" }]\n'
RTU = '[[buses]]\nname = "dlt-1"\nkind = "rtu"\ndevice = "/dev/ttyUSB0"\n'


def test_a_bus_speaks_modbus_unless_told_and_dlt645_settings_default() -> None:
    bus = parse_config(HEAD + RTU, "g.toml").buses[0]
    assert isinstance(bus, RtuBus)
    assert bus.protocol == "modbus"
    assert bus.dlt645 is None
    text = HEAD + RTU + 'protocol = "dlt645"\n[buses.dlt645]\ntime_zone = "Asia/Shanghai"\n'
    bus = parse_config(text, "g.toml").buses[0]
    assert isinstance(bus, RtuBus)
    assert bus.protocol == "dlt645"
    assert bus.dlt645_settings.time_zone == "Asia/Shanghai"
    assert bus.dlt645_settings.time_sync_h == 24.0


def test_a_dlt645_bus_gets_the_dlt645_line_unless_told() -> None:
    bus = parse_config(HEAD + RTU + 'protocol = "dlt645"\n', "g.toml").buses[0]
    assert isinstance(bus, RtuBus)
    assert (bus.baud, bus.parity, bus.stopbits, bus.timeout_s) == (2400, "E", 1, 1.0)
    port = dlt645_port_for(bus)
    defaults = inspect.signature(Dlt645Port).parameters
    assert (port.baud, port.parity, port.timeout) == (2400, "E", 1.0)
    assert [defaults[k].default for k in ("baud", "parity", "timeout")] == [2400, "E", 1.0]
    told = 'protocol = "dlt645"\nbaud = 9600\nparity = "N"\ntimeout_s = 0.3\n'
    bus = parse_config(HEAD + RTU + told, "g.toml").buses[0]
    assert isinstance(bus, RtuBus)
    assert (bus.baud, bus.parity, bus.timeout_s) == (9600, "N", 0.3)
    modbus = parse_config(HEAD + RTU, "g.toml").buses[0]
    assert isinstance(modbus, RtuBus)
    assert (modbus.baud, modbus.parity, modbus.timeout_s) == (9600, "N", 0.5)


@pytest.mark.parametrize(
    ("extra", "key", "problem"),
    [
        ('protocol = "dlt646"\n', "buses.0.rtu.protocol", "'modbus' or 'dlt645'"),
        (
            'protocol = "dlt645"\n[buses.dlt645]\ntime_zone = "Mars/Olympus"\n',
            "buses.0.rtu.dlt645.time_zone",
            "unknown time zone",
        ),
        (
            'protocol = "dlt645"\n[buses.dlt645]\ntime_sync_h = 0\n',
            "buses.0.rtu.dlt645.time_sync_h",
            "greater than 0",
        ),
        ("[buses.dlt645]\n", "buses.0.rtu", 'protocol is not "dlt645"'),
    ],
)
def test_bad_dlt645_bus_settings_name_the_key(extra: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(HEAD + RTU + extra, "g.toml")
    assert caught.value.key == key
    assert problem in caught.value.problem


def test_measured_points_default_to_what_a_modbus_map_publishes_and_can_be_chosen() -> None:
    dlt = HEAD + RTU + 'protocol = "dlt645"\n'
    bus = parse_config(dlt, "g.toml").buses[0]
    assert isinstance(bus, RtuBus)
    assert bus.dlt645_settings.measured == list(DLT645_MEASURED)
    assert bus.dlt645_settings.measured_every == DLT645_MEASURED_EVERY == 10
    # what a Modbus map publishes: every point of the single-phase model a reading carries
    single = load_dlt645_map("dlt645_single_phase")
    assert set(DLT645_MEASURED) == {p.name for p in single.points if p.name in READING_POINTS}
    chosen = '[buses.dlt645]\nmeasured = ["voltage_l2", "active_power_l3"]\nmeasured_every = 3\n'
    bus = parse_config(dlt + chosen, "g.toml").buses[0]
    assert isinstance(bus, RtuBus)
    assert bus.dlt645_settings.measured == ["voltage_l2", "active_power_l3"]
    assert bus.dlt645_settings.measured_every == 3
    none = parse_config(dlt + "[buses.dlt645]\nmeasured = []\n", "g.toml").buses[0]
    assert isinstance(none, RtuBus)
    assert none.dlt645_settings.measured == []  # energy and status only


@pytest.mark.parametrize(
    ("measured", "problem"),
    [
        ('["voltage", "volts"]', "bus 'dlt-1': dlt645.measured: 'volts' fills no reading field"),
        ('["energy_import"]', "'energy_import' fills no reading field"),
        ('["status"]', "'status' fills no reading field"),
        ('["current", "current"]', "bus 'dlt-1': dlt645.measured: 'current' named twice"),
    ],
)
def test_a_measured_point_that_fills_no_reading_field_names_the_bus_and_point(
    measured: str, problem: str
) -> None:
    text = HEAD + RTU + f'protocol = "dlt645"\n[buses.dlt645]\nmeasured = {measured}\n'
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "g.toml")
    assert caught.value.key == "buses.0.rtu"
    assert problem in caught.value.problem
    if "twice" not in problem:
        assert "(known: voltage, active_power, current, " in caught.value.problem


def test_measured_every_is_at_least_one() -> None:
    text = HEAD + RTU + 'protocol = "dlt645"\n[buses.dlt645]\nmeasured_every = 0\n'
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "g.toml")
    assert caught.value.key == "buses.0.rtu.dlt645.measured_every"


def test_modbus_tcp_cannot_be_told_to_speak_dlt645() -> None:
    tcp = '[[buses]]\nname = "t"\nkind = "tcp"\nhost = "h"\nprotocol = "dlt645"\n'
    with pytest.raises(ConfigError) as caught:
        parse_config(HEAD + tcp, "g.toml")
    assert caught.value.key == "buses.0.tcp.protocol"


hex8 = st.text("0123456789ABCDEF", min_size=8, max_size=8)


@given(hex8, hex8)
def test_a_control_secret_round_trips(password: str, operator: str) -> None:
    creds = parse_control_secret(control_secret(password, operator))
    assert creds is not None
    assert str(creds.password) == password
    assert str(creds.operator) == operator
    assert "password=***" in repr(creds)


def test_esam_has_no_credentials() -> None:
    assert parse_control_secret(ESAM) is None
    assert parse_control_secret(" ESAM ") is None


@given(st.text(max_size=40))
def test_any_control_secret_text_parses_or_is_a_value_error(text: str) -> None:
    try:
        creds = parse_control_secret(text)
    except ValueError as exc:
        assert str(exc)
    else:
        assert creds is None or isinstance(creds, Dlt645Credentials)


@given(st.integers(0, 999_999_999_999 - 999), st.integers(0, 999))
def test_an_address_range_is_every_address_in_it(low: int, width: int) -> None:
    text = f"{low:012d}-{low + width:012d}"
    assert parse_addresses(text) == [Address.of_number(n) for n in range(low, low + width + 1)]


@given(st.text(max_size=40))
def test_any_addresses_text_parses_or_is_one_provision_error(text: str) -> None:
    try:
        found = parse_addresses(text)
    except ProvisionError as exc:
        assert "\n" not in str(exc)
    else:
        assert found


def _plan(**fields: str) -> MeterRecord:
    return plan_dlt645_record(fields, "DLT-1", "dlt-1", b"k" * 16, 0)


def test_enrolment_on_a_dlt645_bus_keeps_address_and_secret() -> None:
    record = _plan(address="201512340001", password="02123456", operator_code="0000ABCD")
    assert record.unit_id == 201512340001
    assert record.map_name == "dlt645_single_phase"
    assert record.control_secret == "02123456 0000ABCD"
    assert _plan(address="7", password=ESAM).control_secret == ESAM


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"password": "02000000"}, "address"),
        ({"address": "AA0000000001", "password": "02000000"}, "address"),
        ({"address": "1"}, "password"),
        ({"address": "1", "password": "0200"}, "password"),
        ({"address": "1", "password": "02000000", "operator_code": "xyz"}, "operator_code"),
        ({"address": "1", "operator_code": "00000001"}, "password"),
        ({"address": "1", "password": "02000000", "map": "pe1"}, "map"),
        ({"address": "1", "password": "02000000", "relay_output": "b:1:0"}, "relay_output"),
    ],
)
def test_bad_dlt645_enrolments_are_refused_by_field(fields: dict[str, str], field: str) -> None:
    with pytest.raises(Dlt645FieldError) as caught:
        _plan(**fields)
    assert caught.value.field == field


@given(st.text(max_size=20), st.text(max_size=12), st.text(max_size=12))
def test_any_dlt645_enrolment_text_is_a_record_or_a_field_error(
    address: str, password: str, operator: str
) -> None:
    try:
        record = _plan(address=address, password=password, operator_code=operator)
    except Dlt645FieldError as exc:
        assert exc.field in {"address", "password", "operator_code"}
    else:
        assert 0 <= record.unit_id <= 999_999_999_999
        assert record.control_secret is not None
