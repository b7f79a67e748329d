"""The shipped broker ACL template (packaging/mosquitto-acl.template) on a mutual-TLS Mosquitto: a gateway writes only its own tree and reads only its own commands, the headend reads all and commands all, and a client without a certificate or with another gateway's certificate cannot command a gateway."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mosquitto import Mosquitto, TlsMaterial
from tests.support.mqtt import ConnectRefusedError, TestClient
from tests.support.pki import TestCA

pytestmark = [pytest.mark.broker, pytest.mark.reliability]

TEMPLATE = Path(__file__).resolve().parents[2] / "packaging" / "mosquitto-acl.template"
GW, OTHER = "gw-test", "gw-other"
CMD = f"prepaid/v1/{GW}/meters/PE1-000001/cmd"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    ca = TestCA(tmp_path)
    material = TlsMaterial(ca=ca.cert_path)
    for cn in (GW, OTHER, "headend"):
        material.clients[cn] = ca.issue(cn, server=False)
    server = ca.issue("localhost", server=True)
    broker = Mosquitto(tmp_path, tls=material, server_cert=server, acl=TEMPLATE.read_text())
    broker.start()
    yield broker
    broker.stop()


def _only_marker_arrives(receiver: TestClient, topic: str, marker: bytes) -> None:
    """The receiver's next message is the marker, published after the forbidden one: the
    broker handled (and dropped) the forbidden publish before it."""
    got = receiver.next_message(timeout=5)
    assert (got.topic, got.payload) == (topic, marker)


def test_another_gateways_certificate_cannot_command(broker: Mosquitto) -> None:
    with (
        TestClient(broker, "gw", cert_name=GW) as gw,
        TestClient(broker, "he", cert_name="headend") as he,
        TestClient(broker, "other", cert_name=OTHER) as other,
    ):
        gw.subscribe(CMD)
        other.publish(CMD, b'{"v":1,"id":"x","cmd":"reread","meter":"PE1-000001"}')
        other.publish(f"prepaid/v1/{GW}/cmd", b"forged gateway-wide")
        he.publish(CMD, b"marker")
        _only_marker_arrives(gw, CMD, b"marker")


def test_gateway_writes_only_its_tree_and_reads_only_its_commands(broker: Mosquitto) -> None:
    reading = f"prepaid/v1/{GW}/meters/PE1-000001/reading"
    with (
        TestClient(broker, "gw", cert_name=GW) as gw,
        TestClient(broker, "he", cert_name="headend") as he,
        TestClient(broker, "other", cert_name=OTHER) as other,
    ):
        he.subscribe("prepaid/v1/#")
        other.publish(reading, b"forged reading")  # into gw-test's tree: dropped
        gw.publish(CMD, b"a gateway commanding itself")  # its own cmd topic: read only
        gw.publish(reading, b"own reading")
        _only_marker_arrives(he, reading, b"own reading")

        other_cmd = f"prepaid/v1/{OTHER}/meters/PE1-000001/cmd"
        gw.subscribe(other_cmd)  # granted by the protocol, never delivered
        gw.subscribe(CMD)
        he.publish(other_cmd, b"for the other gateway")
        he.publish(CMD, b"marker")
        _only_marker_arrives(gw, CMD, b"marker")


def test_client_without_certificate_is_refused(broker: Mosquitto) -> None:
    with pytest.raises(ConnectRefusedError):
        TestClient(broker, "anonymous").connect(timeout=5)


def test_headend_commands_and_reads_every_gateway(broker: Mosquitto) -> None:
    with (
        TestClient(broker, "gw", cert_name=GW) as gw,
        TestClient(broker, "he", cert_name="headend") as he,
    ):
        gw.subscribe(f"prepaid/v1/{GW}/cmd")
        he.subscribe(f"prepaid/v1/{GW}/status")
        he.publish(f"prepaid/v1/{GW}/cmd", b"gateway-wide")
        assert gw.next_message().payload == b"gateway-wide"
        gw.publish(f"prepaid/v1/{GW}/status", b'{"state":"online"}')
        assert he.next_message().payload == b'{"state":"online"}'
