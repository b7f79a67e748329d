"""The gateway config validates every key, takes secrets from the environment, and names file, key and problem on any error."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import ConfigError, RtuBus, TcpBus, load_config, parse_config

GOOD = """
gateway_id = "gw-001"
store = "/var/lib/prepaid-edge/gateway.db"

[[buses]]
name = "rs485-1"
kind = "rtu"
device = "socket://127.0.0.1:4001"
baud = 9600

[[buses]]
name = "tcp-1"
kind = "tcp"
host = "127.0.0.1"
port = 5020

[mqtt]
brokers = [{{ host = "127.0.0.1", port = 8883 }}, {{ host = "127.0.0.2" }}]
ca_file = "/etc/prepaid-edge/ca.pem"

[tokens]
currency = "KES"
online_public_keys = {{ k1 = "{}" }}
""".format(base64.urlsafe_b64encode(bytes(32)).decode().rstrip("="))


def test_good_config_loads() -> None:
    cfg = parse_config(GOOD, "gateway.toml", env={})
    assert cfg.gateway_id == "gw-001"
    assert isinstance(cfg.bus("rs485-1"), RtuBus)
    assert isinstance(cfg.bus("tcp-1"), TcpBus)
    assert cfg.mqtt.brokers[1].port == 8883
    assert cfg.tokens.currency == "KES"


def test_environment_overrides_secrets() -> None:
    cfg = parse_config(GOOD, "gateway.toml", env={"PREPAID_EDGE__MQTT__PASSWORD": "s3cret"})
    assert cfg.mqtt.password == "s3cret"


@pytest.mark.parametrize(
    ("edit", "key", "problem"),
    [
        (('gateway_id = "gw-001"', 'gateway_id = "gw 001"'), "gateway_id", "pattern"),
        (("baud = 9600", "baud = -1"), "buses.0.rtu.baud", "greater than 0"),
        (('kind = "tcp"', 'kind = "udp"'), "buses.1", "tag"),
        (("port = 5020", 'port = "x"'), "buses.1.tcp.port", "integer"),
        (('currency = "KES"', 'currency = "shillings"'), "tokens.currency", "pattern"),
        (('name = "tcp-1"', 'name = "rs485-1"'), None, "unique"),
        (("[mqtt]", "[mqtt]\nspeed = 3"), "mqtt.speed", "Extra inputs"),
    ],
)
def test_errors_name_file_key_and_problem(
    edit: tuple[str, str], key: str | None, problem: str
) -> None:
    text = GOOD.replace(*edit)
    with pytest.raises(ConfigError) as info:
        parse_config(text, "/etc/gw.toml", env={})
    err = info.value
    assert err.path == "/etc/gw.toml"
    if key is not None:
        assert err.key == key
    assert problem in err.problem


def test_bad_public_key_is_named() -> None:
    text = GOOD.replace('k1 = "', 'k1 = "AAAA')
    with pytest.raises(ConfigError, match="key 'k1'"):
        parse_config(text, "gw.toml", env={})


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("gateway_id = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, env={})


@given(st.text(max_size=300))
def test_garbage_config_is_a_config_error(text: str) -> None:
    try:
        parse_config(text, "fuzz.toml", env={})
    except ConfigError as exc:
        assert exc.path == "fuzz.toml"
