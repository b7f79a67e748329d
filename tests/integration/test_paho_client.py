"""The MQTT link's paho clients (gateway/paho_client.py: the batched one and paho's own,
its fallback), each against Mosquitto: a burst arrives whole and in order (plain and TLS),
a payload bigger than the socket takes at once arrives intact, a clean close still sends
its DISCONNECT (no Last Will), and PUBACKs say delivered or refused as paho would."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from gateway.mqtt_link import BrokerEndpoint, MqttLink, PublishRefusedError, Will
from gateway.paho_client import BufferedClient, PlainClient
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import TestClient

pytestmark = [pytest.mark.broker, pytest.mark.asyncio]

TOPIC = "prepaid/v1/gw-test/meters/m1/reading"


@pytest.fixture(params=[BufferedClient, PlainClient], ids=["buffered", "plain"])
def client(request: pytest.FixtureRequest) -> type[PlainClient]:
    """Each test runs with the batched client and with paho's own (the fallback)."""
    kind: type[PlainClient] = request.param
    return kind


def _endpoint(broker: Mosquitto) -> BrokerEndpoint:
    if broker.tls is None:
        return BrokerEndpoint(broker.host, broker.port)
    ctx = ssl.create_default_context(cafile=str(broker.tls.ca))
    files = broker.tls.clients["gw-test"]
    ctx.load_cert_chain(str(files.cert), str(files.key))
    return BrokerEndpoint("127.0.0.1", broker.port, ctx)


async def _bursts(
    broker: Mosquitto, headend: TestClient, count: int, client: type[PlainClient]
) -> None:
    """``count`` messages in bursts: each fills the window in one loop iteration (paho
    queues them all, one loop_write sends them together), then waits for PUBACKs."""
    acks: list[bool] = []
    wake = asyncio.Event()
    sent = 0
    async with MqttLink(_endpoint(broker), client_id="gw-test", client=client) as link:
        link.attach_acks(lambda _mid, ok: acks.append(ok), wake)
        async with asyncio.timeout(30):
            while len(acks) < count:
                while sent < count and link.publish_nowait(TOPIC, b"%d" % sent) is not None:
                    sent += 1
                wake.clear()
                await wake.wait()
    assert acks == [True] * count
    got = [headend.next_message().payload for _ in range(count)]
    assert got == [b"%d" % i for i in range(count)]


async def test_a_burst_arrives_whole_and_in_order(
    mosquitto: Mosquitto, client: type[PlainClient]
) -> None:
    with TestClient(mosquitto, "headend") as headend:
        headend.subscribe("prepaid/v1/gw-test/#")
        await _bursts(mosquitto, headend, 5000, client)


async def test_a_burst_over_tls_arrives_whole_and_in_order(
    mosquitto_tls: Mosquitto, client: type[PlainClient]
) -> None:
    """PUBACKs come back in TLS records; what the TLS socket decrypted ahead is processed
    without waiting for the socket to turn readable again."""
    with TestClient(mosquitto_tls, "headend", cert_name="headend") as headend:
        headend.subscribe("prepaid/v1/gw-test/#")
        await _bursts(mosquitto_tls, headend, 5000, client)


@pytest.mark.parametrize("tls", [False, True])
async def test_commands_arriving_together_are_all_taken(
    tls: bool, mosquitto: Mosquitto, mosquitto_tls: Mosquitto, client: type[PlainClient]
) -> None:
    """An idle link (nothing in flight) is handed one packet per ``loop_read`` by paho:
    the rest of what one read took must still be processed, not wait for more bytes."""
    broker = mosquitto_tls if tls else mosquitto
    cmd = "prepaid/v1/gw-test/cmd"
    async with MqttLink(_endpoint(broker), client_id="gw-test", client=client) as link:
        await link.subscribe(cmd)
        with TestClient(broker, "headend", cert_name="headend" if tls else None) as headend:
            for i in range(50):
                headend.publish(cmd, b"%d" % i, qos=0)
            got: list[bytes] = []
            async with asyncio.timeout(10):
                while len(got) < 50:
                    got.append((await link.incoming.get()).payload)
    assert got == [b"%d" % i for i in range(50)]


async def test_a_payload_bigger_than_one_send_arrives_intact(
    mosquitto: Mosquitto, client: type[PlainClient]
) -> None:
    payload = bytes(range(256)) * (16 * 1024)  # 4 MiB: loopback takes far less per send
    with TestClient(mosquitto, "headend") as headend:
        headend.subscribe(TOPIC)
        async with MqttLink(_endpoint(mosquitto), client_id="gw", client=client) as link:
            await link.publish(TOPIC, payload)
            await link.publish(TOPIC, b"after")
        assert headend.next_message(timeout=10).payload == payload
        assert headend.next_message().payload == b"after"


async def test_a_clean_close_sends_its_disconnect(
    mosquitto: Mosquitto, client: type[PlainClient]
) -> None:
    """No Last Will after a clean close: the DISCONNECT left before paho closed the
    socket. The marker published afterwards is the first thing on the topic."""
    status = "prepaid/v1/gw-test/status"
    with TestClient(mosquitto, "headend") as headend:
        headend.subscribe(status)
        will = Will(status, b"offline", retain=False)
        async with MqttLink(_endpoint(mosquitto), client_id="gw", will=will, client=client) as link:
            await link.publish(TOPIC, b"x")
        headend.publish(status, b"marker")
        assert headend.next_message().payload == b"marker"


async def test_pubacks_say_delivered_or_refused(tmp_path: Path, client: type[PlainClient]) -> None:
    """Delivered with a subscriber (reason 0) and without one (0x10, no matching
    subscribers); refused by the broker's ACL (0x87): the publish raises."""
    broker = Mosquitto(tmp_path, acl="topic readwrite ok/#\n")
    broker.start()
    try:
        with TestClient(broker, "headend") as headend:
            headend.subscribe("ok/seen")
            async with MqttLink(_endpoint(broker), client_id="gw", client=client) as link:
                await link.publish("ok/seen", b"1")
                await link.publish("ok/unseen", b"2")
                with pytest.raises(PublishRefusedError, match="authori"):
                    await link.publish("forbidden/x", b"3")
                await link.publish("ok/seen", b"4")
            assert [headend.next_message().payload for _ in range(2)] == [b"1", b"4"]
    finally:
        broker.stop()
