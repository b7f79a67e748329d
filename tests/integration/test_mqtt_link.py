"""The gateway's asyncio MQTT link publishes at QoS 1 with acknowledgement, receives commands with MQTT 5 properties, uses TLS, and fails pending work when the broker goes away."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.mqtt_link import BrokerEndpoint, MqttError, MqttLink, PublishRefusedError, Will
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import TestClient

pytestmark = [pytest.mark.broker, pytest.mark.asyncio]


def _tls(broker: Mosquitto, cert_name: str) -> ssl.SSLContext:
    assert broker.tls is not None
    ctx = ssl.create_default_context(cafile=str(broker.tls.ca))
    files = broker.tls.clients[cert_name]
    ctx.load_cert_chain(str(files.cert), str(files.key))
    return ctx


async def test_publish_is_acknowledged_and_delivered(mosquitto: Mosquitto) -> None:
    with TestClient(mosquitto, "headend") as headend:
        headend.subscribe("prepaid/v1/gw-test/#")
        async with MqttLink(BrokerEndpoint(mosquitto.host, mosquitto.port), client_id="gw") as link:
            for i in range(200):
                await link.publish("prepaid/v1/gw-test/meters/m1/reading", b"%d" % i)
        got = [headend.next_message().payload for _ in range(200)]
    assert got == [b"%d" % i for i in range(200)]


async def test_incoming_command_carries_response_topic_and_correlation(
    mosquitto: Mosquitto,
) -> None:
    async with MqttLink(BrokerEndpoint(mosquitto.host, mosquitto.port), client_id="gw") as link:
        await link.subscribe("prepaid/v1/gw-test/cmd")
        async with MqttLink(
            BrokerEndpoint(mosquitto.host, mosquitto.port), client_id="hq"
        ) as headend:
            await headend.subscribe("replies/hq")
            # A raw paho publish with properties, as a headend would send it.
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = "replies/hq"
            props.CorrelationData = b"req-1"
            headend._client.publish("prepaid/v1/gw-test/cmd", b"{}", qos=1, properties=props)
            msg = await asyncio.wait_for(link.incoming.get(), 5)
            assert msg.response_topic == "replies/hq"
            assert msg.correlation_data == b"req-1"
            await link.publish("replies/hq", b"ok", correlation_data=msg.correlation_data)
            reply = await asyncio.wait_for(headend.incoming.get(), 5)
            assert reply.payload == b"ok"


async def test_tls_link_with_client_certificate(mosquitto_tls: Mosquitto) -> None:
    endpoint = BrokerEndpoint("127.0.0.1", mosquitto_tls.port, _tls(mosquitto_tls, "gw-test"))
    with TestClient(mosquitto_tls, "headend", cert_name="headend") as headend:
        headend.subscribe("prepaid/v1/gw-test/status")
        async with MqttLink(endpoint, client_id="gw-test") as link:
            await link.publish("prepaid/v1/gw-test/status", b"online", retain=True)
        assert headend.next_message().payload == b"online"


async def test_tls_link_without_certificate_is_refused(mosquitto_tls: Mosquitto) -> None:
    assert mosquitto_tls.tls is not None
    ctx = ssl.create_default_context(cafile=str(mosquitto_tls.tls.ca))
    link = MqttLink(BrokerEndpoint("127.0.0.1", mosquitto_tls.port, ctx), client_id="x")
    with pytest.raises(MqttError):
        async with link:
            pass


async def test_unreachable_broker_raises(mosquitto: Mosquitto) -> None:
    mosquitto.stop()
    with pytest.raises(MqttError, match="cannot connect"):
        async with MqttLink(BrokerEndpoint(mosquitto.host, mosquitto.port), client_id="gw"):
            pass


async def test_broker_death_fails_pending_and_publishes_will(mosquitto: Mosquitto) -> None:
    with TestClient(mosquitto, "headend") as headend:
        headend.subscribe("prepaid/v1/gw-test/status")
        link = MqttLink(
            BrokerEndpoint(mosquitto.host, mosquitto.port),
            client_id="gw",
            will=Will("prepaid/v1/gw-test/status", b"offline"),
            keepalive=5,
        )
        async with link:
            await link.publish("prepaid/v1/gw-test/status", b"online", retain=True)
            assert headend.next_message().payload == b"online"
            # Drop the TCP connection under paho without a DISCONNECT: the broker must
            # publish the Last Will.
            assert link._sock is not None
            link._sock.shutdown(2)
            await asyncio.wait_for(asyncio.shield(link.closed), 5)
            with pytest.raises(MqttError):
                await link.publish("prepaid/v1/gw-test/x", b"late")
        assert headend.next_message().payload == b"offline"


async def test_publish_nowait_fills_the_window_and_acks_free_it(mosquitto: Mosquitto) -> None:
    acks: list[tuple[int, bool]] = []
    wake = asyncio.Event()
    with TestClient(mosquitto, "headend") as headend:
        headend.subscribe("prepaid/v1/gw-test/#")
        async with MqttLink(
            BrokerEndpoint(mosquitto.host, mosquitto.port), client_id="gw", max_inflight=4
        ) as link:
            link.attach_acks(lambda mid, ok: acks.append((mid, ok)), wake)
            topic = "prepaid/v1/gw-test/meters/m1/reading"
            mids = [link.publish_nowait(topic, b"%d" % i) for i in range(4)]
            assert None not in mids
            assert link.publish_nowait(topic, b"full") is None  # the window holds 4
            # a publish that awaits its PUBACK queues behind the same window
            waiting = asyncio.create_task(link.publish(topic, b"awaited"))
            async with asyncio.timeout(10):
                while len(acks) < 4:
                    wake.clear()
                    await wake.wait()
                await waiting
            assert sorted(m for m, _ in acks) == sorted(m for m in mids if m is not None)
            assert all(ok for _, ok in acks)
            assert link.window.used == 0
        got = [headend.next_message().payload for _ in range(5)]
    assert got == [b"0", b"1", b"2", b"3", b"awaited"]


async def test_both_publish_paths_refuse_a_topic_no_broker_takes(mosquitto: Mosquitto) -> None:
    wake = asyncio.Event()
    with TestClient(mosquitto, "headend") as headend:
        headend.subscribe("prepaid/v1/gw-test/#")
        async with MqttLink(
            BrokerEndpoint(mosquitto.host, mosquitto.port), client_id="gw", max_inflight=2
        ) as link:
            link.attach_acks(lambda _mid, _ok: None, wake)
            for bad in ("prepaid/v1/gw-test/+", "prepaid/v1/gw-test/#", "$SYS/x", ""):
                with pytest.raises(PublishRefusedError):
                    link.publish_nowait(bad, b"refused")
                with pytest.raises(PublishRefusedError):
                    await link.publish(bad, b"refused")
                assert link.window.used == 0, f"{bad!r} kept a window slot"
            await link.publish("prepaid/v1/gw-test/after", b"after")
            assert not link.closed.done()
        assert headend.next_message().payload == b"after"
