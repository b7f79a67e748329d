"""The provisioning CLI's parsers (unit ranges, broker URLs, CSV files, enrolment fields and
updates, sealed key blobs) accept what they document and refuse everything else with a
ProvisionError."""

from __future__ import annotations

import base64
import csv
import io
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import GatewayConfig, parse_config
from gateway.store import StoredMeter
from provisioning.broker_url import BrokerAddress, parse_broker_url
from provisioning.enrol import COLUMNS, plan_csv, plan_meter
from provisioning.enrol_changes import plan_update
from provisioning.enrol_settings import FieldError
from provisioning.errors import ProvisionError
from provisioning.scan import parse_units
from provisioning.sealed_keys import decrypt_keys, encrypt_keys

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
CONFIG: GatewayConfig = parse_config(
    """
gateway_id = "gw-u"
store = "/nonexistent/gateway.db"
[[buses]]
name = "tcp-1"
kind = "tcp"
host = "127.0.0.1"
[mqtt]
brokers = [{ host = "127.0.0.1", port = 1883, tls = false }]
""",
    "test",
    env={},
)


@given(st.integers(1, 247), st.integers(0, 246))
def test_unit_ranges_parse_to_their_ids(low: int, width: int) -> None:
    high = min(247, low + width)
    assert parse_units(f"{low}-{high}") == range(low, high + 1)
    assert parse_units(str(low)) == range(low, low + 1)


@given(st.text(max_size=12))
def test_unit_range_text_is_a_range_or_a_provision_error(text: str) -> None:
    try:
        units = parse_units(text)
    except ProvisionError:
        return
    assert 1 <= units.start <= units.stop - 1 <= 247


@pytest.mark.parametrize("text", ["0", "248", "9-3", "a-b", "", "1-", "-4"])
def test_bad_unit_ranges_are_refused(text: str) -> None:
    with pytest.raises(ProvisionError):
        parse_units(text)


def _key_file(folder: Path) -> Path:
    path = folder / "m.key"
    if not path.exists():
        path.write_text("ab" * 32 + "\n")
        path.chmod(0o600)
    return path


@given(
    st.dictionaries(
        st.sampled_from(COLUMNS),
        st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12),
        max_size=8,
    )
)
@settings(max_examples=200, deadline=None)
def test_any_fields_plan_a_meter_or_name_the_bad_field(fields: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        full = {
            "meter_id": "PE1-000001",
            "bus": "tcp-1",
            "unit_id": "1",
            "key_file": str(_key_file(base)),
            "price_per_kwh": "10",
            **fields,
        }
        try:
            planned = plan_meter(full, CONFIG, NOW, base=base)
        except FieldError as exc:
            assert exc.field in COLUMNS or exc.field == "settings"
            return
        assert 1 <= planned.record.unit_id <= 247
        assert planned.state.ledger.balance <= planned.state.settings.max_balance


@given(st.lists(st.lists(st.text(max_size=10), max_size=6), max_size=5), st.booleans())
@settings(max_examples=200, deadline=None)
def test_any_csv_is_planned_whole_or_refused_by_line(rows: list[list[str]], header: bool) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    if header:
        writer.writerow(["meter_id", "bus", "unit_id", "key_file"])
    writer.writerows(rows)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.csv"
        path.write_text(buffer.getvalue())
        _key_file(Path(tmp))
        try:
            planned = plan_csv(path, {"price_per_kwh": "1"}, CONFIG, NOW)
        except ProvisionError as exc:
            assert str(exc)
            assert "\n" not in str(exc)
            return
    assert planned
    assert all(line >= 2 for line, _ in planned)


@given(
    st.dictionaries(
        st.sampled_from(["salt", "nonce", "ciphertext", "n", "junk"]),
        st.one_of(
            st.text(max_size=30), st.binary(max_size=24).map(lambda b: base64.b64encode(b).decode())
        ),
        max_size=4,
    )
)
@settings(max_examples=60, deadline=None)
def test_garbled_key_blobs_are_refused(blob: dict[str, str]) -> None:
    with pytest.raises(ProvisionError):
        decrypt_keys({"kdf": "scrypt", "cipher": "aes-256-gcm", **blob}, "a passphrase long enough")


def test_sealed_keys_open_with_the_passphrase_only() -> None:
    keys = {"PE1-000001": "11" * 32, "PE1-000002": "22" * 32}
    sealed = encrypt_keys(keys, "correct horse battery")
    assert "11" * 32 not in str(sealed)
    opened = decrypt_keys(sealed, "correct horse battery")
    assert {m: k.hex() for m, k in opened.items()} == keys
    with pytest.raises(ProvisionError, match="wrong passphrase"):
        decrypt_keys(sealed, "correct horse batterY")


@given(
    st.dictionaries(
        st.sampled_from([c for c in COLUMNS if c != "meter_id"]),
        st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12),
        max_size=6,
    )
)
@settings(max_examples=200, deadline=None)
def test_any_update_is_planned_or_refused_with_the_field(fields: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        first = plan_meter(
            {"meter_id": "PE1-000001", "bus": "tcp-1", "unit_id": "1",
             "key_file": str(_key_file(base)), "price_per_kwh": "10"},
            CONFIG, NOW, base=base,
        )  # fmt: skip
        stored = StoredMeter(first.record, first.state, None, None)
        try:
            planned = plan_update(fields, stored, {}, [stored], CONFIG, base=base)
        except FieldError as exc:
            assert exc.field in COLUMNS or exc.field == "settings"
            return
        except ProvisionError as exc:
            assert "nothing" in str(exc)
            return
    assert planned.changed
    assert planned.stored.state.ledger == first.state.ledger  # money never moves here
    assert planned.record.key_epoch == first.record.key_epoch
    assert 1 <= planned.record.unit_id <= 247


# ---------------------------------------------------------------------------- init --broker


def test_broker_urls_as_documented() -> None:
    assert parse_broker_url("mqtt://127.0.0.1:1884") == BrokerAddress("127.0.0.1", 1884, False)
    assert parse_broker_url("mqtt://localhost") == BrokerAddress("localhost", 1883, False)
    assert parse_broker_url("mqtts://mqtt.example.com") == BrokerAddress(
        "mqtt.example.com", 8883, True
    )
    assert parse_broker_url("mqtt.example.com:9883") == BrokerAddress(
        "mqtt.example.com", 9883, True
    )
    assert parse_broker_url("MQTT://[::1]:1884") == BrokerAddress("::1", 1884, False)
    for bad in ("", "mqtt://", "ws://h:1", "mqtt://h:0", "mqtt://h:65536", "mqtt://h:x",
                "mqtt://::1", "mqtt://[::1", "mqtt://h/path", "mqtt://h:1:2", "h:\u00b2"):  # fmt: skip
        with pytest.raises(ProvisionError, match=r"^--broker "):
            parse_broker_url(bad)


HOSTS = st.from_regex(r"[a-z0-9][a-z0-9.-]{0,30}", fullmatch=True)


@given(st.sampled_from(["mqtt", "mqtts", ""]), HOSTS, st.integers(1, 65535))
def test_a_broker_url_gives_back_its_parts(scheme: str, host: str, port: int) -> None:
    url = f"{scheme}://{host}:{port}" if scheme else f"{host}:{port}"
    assert parse_broker_url(url) == BrokerAddress(host, port, tls=scheme != "mqtt")
    # and the config line it becomes reads back the same
    toml = parse_broker_url(url).toml()
    config = parse_config(
        f'gateway_id = "g"\nstore = "s.db"\n[mqtt]\nbrokers = [{toml}]\n', "t", env={}
    )
    broker = config.mqtt.brokers[0]
    assert (broker.host, broker.port, broker.tls) == (host, port, scheme != "mqtt")


@given(st.text(max_size=60))
def test_any_broker_text_is_an_address_or_one_refusal(text: str) -> None:
    try:
        broker = parse_broker_url(text)
    except ProvisionError as exc:
        assert str(exc).startswith("--broker ")
        assert "\n" not in str(exc)
    else:
        assert broker.host
        assert 0 < broker.port < 65536
