"""The broker fixtures start a real Mosquitto that carries MQTT 5 QoS 1, enforces mutual TLS and its ACL."""

from __future__ import annotations

import queue

import pytest

from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import ConnectRefusedError, TestClient

pytestmark = pytest.mark.broker


def _roundtrip(broker: Mosquitto, sub_cert: str | None, pub_cert: str | None, topic: str) -> None:
    with (
        TestClient(broker, "sub", cert_name=sub_cert) as sub,
        TestClient(broker, "pub", cert_name=pub_cert) as pub,
    ):
        sub.subscribe(topic)
        pub.publish(topic, b'{"v":1}', qos=1)
        got = sub.next_message()
    assert got.topic == topic
    assert got.payload == b'{"v":1}'
    assert got.qos == 1


def test_plain_broker_carries_qos1(mosquitto: Mosquitto) -> None:
    _roundtrip(mosquitto, None, None, "prepaid/v1/gw-test/status")


def test_tls_broker_carries_qos1_between_certified_clients(mosquitto_tls: Mosquitto) -> None:
    _roundtrip(mosquitto_tls, "headend", "gw-test", "prepaid/v1/gw-test/meters/m1/reading")


def test_tls_broker_refuses_client_without_certificate(mosquitto_tls: Mosquitto) -> None:
    client = TestClient(mosquitto_tls, "anon", cert_name=None)
    with pytest.raises(ConnectRefusedError):
        client.connect(timeout=5)
    client.close()


def test_acl_keeps_other_gateways_topics_from_intruder(mosquitto_tls: Mosquitto) -> None:
    # Mosquitto grants a forbidden SUBSCRIBE in its SUBACK and enforces at delivery,
    # so assert on what arrives. Delivery to one client is in order: once the allowed
    # marker arrives, the forbidden message would already have been delivered.
    with (
        TestClient(mosquitto_tls, "spy", cert_name="intruder") as spy,
        TestClient(mosquitto_tls, "gw", cert_name="gw-test") as gw,
        TestClient(mosquitto_tls, "marker", cert_name="intruder") as marker,
    ):
        spy.subscribe("prepaid/v1/gw-test/#")
        spy.subscribe("sandbox/marker")
        gw.publish("prepaid/v1/gw-test/meters/m1/balance", b"secret")
        marker.publish("sandbox/marker", b"done")
        first = spy.next_message()
        assert first.topic == "sandbox/marker"
        with pytest.raises(queue.Empty):
            spy.messages.get_nowait()


def test_acl_refuses_intruder_publishing_commands(mosquitto_tls: Mosquitto) -> None:
    with (
        TestClient(mosquitto_tls, "gw", cert_name="gw-test") as gw,
        TestClient(mosquitto_tls, "evil", cert_name="intruder") as evil,
        TestClient(mosquitto_tls, "hq", cert_name="headend") as hq,
    ):
        gw.subscribe("prepaid/v1/gw-test/cmd")
        evil.publish("prepaid/v1/gw-test/cmd", b'{"cmd":"disconnect"}')
        hq.publish("prepaid/v1/gw-test/cmd", b'{"cmd":"reread"}')
        got = gw.next_message()
        assert got.payload == b'{"cmd":"reread"}'
        with pytest.raises(queue.Empty):
            gw.messages.get_nowait()
