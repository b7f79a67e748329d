"""The batched paho client's self-check passes on the installed paho and catches a paho whose private methods differ (then one warning, and paho's own client); pyproject pins paho to the series the override was read against and cryptography past its advisory."""

from __future__ import annotations

import logging
import tomllib
from importlib.metadata import version
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from packaging.requirements import Requirement
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.paho_client import (
    PAHO_SERIES,
    BufferedClient,
    PlainClient,
    choose_client,
    client_class,
    self_check,
)

ROOT = Path(__file__).resolve().parents[2]


def _requirement(name: str) -> Requirement:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [Requirement(d) for d in project["dependencies"] if Requirement(d).name == name]
    assert len(found) == 1, project["dependencies"]
    return found[0]


class RenamedRecv(paho.Client):
    """A paho whose ``_sock_recv`` takes another parameter."""

    def _sock_recv(self, size: int) -> bytes:
        return super()._sock_recv(size)


class SilentPuback(paho.Client):
    """A paho that takes the published message off its books without telling anyone."""

    def _do_on_publish(
        self, mid: int, reason_code: ReasonCode, properties: Properties
    ) -> MQTTErrorCode:
        self._out_messages.pop(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS


class NoPubackHandler(paho.Client):
    """A paho that handles PUBACK elsewhere."""

    _handle_pubackcomp = None  # type: ignore[assignment]


def test_the_installed_paho_passes() -> None:
    assert self_check() is None
    assert client_class() is BufferedClient


@pytest.mark.parametrize(
    ("altered", "problem"),
    [
        (RenamedRecv, "_sock_recv"),
        (SilentPuback, "PUBACKs reported []"),
        (NoPubackHandler, "_handle_pubackcomp is missing"),
    ],
)
def test_an_altered_paho_falls_back_with_one_warning(
    altered: type[paho.Client], problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    found = self_check(altered)
    assert found is not None
    assert problem in found
    with caplog.at_level(logging.WARNING, logger="gateway.paho_client"):
        assert choose_client(altered) is PlainClient
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "paho's own client" in warnings[0].getMessage()


def test_paho_is_pinned_to_the_series_read() -> None:
    spec = _requirement("paho-mqtt").specifier
    major, minor = (int(p) for p in PAHO_SERIES.split("."))
    assert version("paho-mqtt").startswith(f"{PAHO_SERIES}.")
    assert f"{major}.{minor}.0" in spec
    assert f"{major}.{minor}.9" in spec
    assert f"{major}.{minor - 1}.0" not in spec
    assert f"{major}.{minor + 1}.0" not in spec


def test_cryptography_excludes_the_advisory() -> None:
    """GHSA-537c-gmf6-5ccf is fixed in 48.0.1."""
    spec = _requirement("cryptography").specifier
    assert "48.0.0" not in spec
    assert "47.0.0" not in spec
    assert "48.0.1" in spec
    assert version("cryptography") in spec
