"""What the Mosquitto we test with does for a headend that is away, as docs/mqtt.md (*Subscribing*) says: a persistent session's subscription, plain or shared, is queued for while the broker runs; of two members of a shared subscription the one away keeps its round-robin share waiting for it, unless it left with a clean session; after a graceful broker restart (persistence on) a plain subscription is queued for but a shared one is gone until subscribed again; a broker SIGKILL before its autosave loses the session. Also: the page names the installed Mosquitto version and the settings our tests run it with."""

from __future__ import annotations

import queue
import re
import subprocess
from pathlib import Path

import pytest

from tests.support.mosquitto import Mosquitto, mosquitto_binary
from tests.support.mqtt import TestClient

pytestmark = [pytest.mark.broker]

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "mqtt.md"
DATA = "prepaid/v1/gw-1/meters/PE1-000001/reading"
PLAIN = "prepaid/v1/+/meters/+/+"
SHARED = f"$share/headend/{PLAIN}"


def _publish(broker: Mosquitto, first: int, count: int, *markers: str) -> list[bytes]:
    """``count`` numbered QoS 1 messages on :data:`DATA`, then an end marker on each of
    ``markers``, all acknowledged by the broker; the numbered payloads."""
    payloads = [str(n).encode() for n in range(first, first + count)]
    with TestClient(broker, "gw-1") as gateway:
        for payload in payloads:
            gateway.publish(DATA, payload)
        for marker in markers:
            gateway.publish(marker, b"end")
    return payloads


def _until_marker(client: TestClient, marker: str) -> list[bytes]:
    """What ``client`` receives on :data:`DATA` before its marker: the broker delivers one
    session's messages in the order they were published, so the marker comes after
    everything queued before it."""
    got: list[bytes] = []
    while True:
        try:
            msg = client.next_message(timeout=10)
        except queue.Empty:
            raise AssertionError(f"no marker on {marker} within 10 s") from None
        if msg.topic == marker:
            return got
        if msg.topic == DATA:
            got.append(msg.payload)


def _member(broker: Mosquitto, client_id: str, *filters: str) -> TestClient:
    client = TestClient(broker, client_id, persistent=True)
    client.connect()
    for topic_filter in filters:
        client.subscribe(topic_filter)
    return client


def test_a_sole_shared_member_away_is_queued_for_while_the_broker_runs(
    mosquitto: Mosquitto,
) -> None:
    _member(mosquitto, "hq-1", SHARED, "marker/hq-1").close()
    sent = _publish(mosquitto, 1, 5, "marker/hq-1")
    with TestClient(mosquitto, "hq-1", persistent=True) as back:
        assert back.session_present
        assert _until_marker(back, "marker/hq-1") == sent


def test_the_member_away_keeps_its_round_robin_share_waiting(mosquitto: Mosquitto) -> None:
    online = _member(mosquitto, "hq-a", SHARED, "marker/hq-a")
    _member(mosquitto, "hq-b", SHARED, "marker/hq-b").close()
    try:
        sent = _publish(mosquitto, 1, 10, "marker/hq-a", "marker/hq-b")
        to_online = _until_marker(online, "marker/hq-a")
    finally:
        online.close()
    with TestClient(mosquitto, "hq-b", persistent=True) as back:
        to_away = _until_marker(back, "marker/hq-b")
    assert 0 < len(to_online) < len(sent), "the member online did not take over the share"
    assert sorted(to_online + to_away) == sorted(sent)


def test_a_member_retired_with_a_clean_session_takes_no_share(mosquitto: Mosquitto) -> None:
    online = _member(mosquitto, "hq-a", SHARED, "marker/hq-a")
    _member(mosquitto, "hq-b", SHARED).close()
    with TestClient(mosquitto, "hq-b"):  # clean start, session expiry 0: the session ends
        pass
    try:
        sent = _publish(mosquitto, 1, 10, "marker/hq-a")
        assert _until_marker(online, "marker/hq-a") == sent
    finally:
        online.close()


def test_a_broker_restart_keeps_plain_subscriptions_but_drops_shared_ones(
    tmp_path: Path,
) -> None:
    broker = Mosquitto(tmp_path, persistence=True)
    broker.start()
    try:
        _member(broker, "hq-plain", PLAIN, "marker/hq-plain").close()
        _member(broker, "hq-shared", SHARED, "marker/hq-shared").close()
        broker.stop()  # SIGTERM: Mosquitto saves its persistence file on the way out
        broker.start()
        sent = _publish(broker, 1, 3, "marker/hq-plain", "marker/hq-shared")
        with TestClient(broker, "hq-plain", persistent=True) as plain:
            assert plain.session_present
            assert _until_marker(plain, "marker/hq-plain") == sent
        with TestClient(broker, "hq-shared", persistent=True) as shared:
            assert shared.session_present
            assert _until_marker(shared, "marker/hq-shared") == []  # nothing was queued
            later = _publish(broker, 4, 2, "marker/hq-shared")
            assert _until_marker(shared, "marker/hq-shared") == []  # not even when online
            shared.subscribe(SHARED)  # subscribing again on connect is what brings it back
            later = _publish(broker, 6, 2, "marker/hq-shared")
            assert _until_marker(shared, "marker/hq-shared") == later
    finally:
        broker.stop()


def test_a_broker_sigkill_before_its_autosave_loses_the_session(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path, persistence=True)
    broker.start()
    try:
        _member(broker, "hq-plain", PLAIN).close()
        broker.kill()
        broker.start()
        _publish(broker, 1, 3)
        with TestClient(broker, "hq-plain", persistent=True) as back:
            assert back.session_present is False  # no session: nothing was queued for it
    finally:
        broker.stop()


def test_the_page_names_the_installed_mosquitto_and_the_settings_we_test_with(
    tmp_path: Path,
) -> None:
    page = PAGE.read_text()
    binary = mosquitto_binary()
    assert binary is not None, "mosquitto is not installed (make mosquitto)"
    banner = subprocess.run([binary, "-h"], capture_output=True, text=True, check=False).stdout
    installed = re.search(r"mosquitto version (\S+)", banner)
    assert installed is not None, banner
    assert f"Mosquitto {installed.group(1)}" in page
    block = re.search(r"```conf\n(# mosquitto\.conf.*?)```", page, re.DOTALL)
    assert block is not None, "docs/mqtt.md shows no mosquitto.conf block"
    ours = Mosquitto(tmp_path, persistence=True).config_path.read_text().splitlines()
    shown = [line for line in block.group(1).splitlines() if line and not line.startswith("#")]
    assert shown
    for line in shown:
        assert line in ours, f"docs/mqtt.md shows {line!r}; our tests run with {ours}"
