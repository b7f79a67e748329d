"""Hostile input against a running `meter-gateway run` on mutual TLS with the shipped ACL: wildcard, reserved, foreign and ACL-forbidden response topics, fuzzed commands, command topics and response topics, signed commands replayed across time-zone offsets or meant for another gateway, a resend that could stall top-ups, a flood of resends from one requester, and commands sent while the gateway is down. After each: the process runs on, its MQTT session never ended, no balance moved that should not, and a genuine top-up is credited."""

from __future__ import annotations

import json
import random
import string
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from gateway.core.commands import Publish
from gateway.resend import MAX_ROWS, REQUESTER_BURST
from gateway.store import MeterUpdate, Store
from tests.integration.helpers import eventually
from tests.reliability.harness import env_count
from tests.reliability.hostile_site import (
    FALLBACK,
    GW,
    REPLIES,
    ROOT,
    HostileSite,
    hostile_site,
)
from tests.reliability.test_hostile_commands import FIXED, _random_json
from tests.support.gateway_env import GatewayWorld, meter_id, online_token

pytestmark = [pytest.mark.asyncio, pytest.mark.broker, pytest.mark.reliability]

FUZZ_CASES = env_count("PREPAID_EDGE_FUZZ_COMMANDS", 300, 3000)
TOPIC_CASES = env_count("PREPAID_EDGE_FUZZ_TOPICS", 200, 2000)
#: Response topics no gateway may publish to: each gets bad_response_topic on cmd/result.
BAD_RESPONSE_TOPICS = [
    "a/#",
    "+/x",
    "#",
    "headend/+/replies",
    "headend/#",
    "$SYS/broker/x",
    "elsewhere/replies",
    "headend/hq/replies/extra",
    "h" * 65_000,
]


def _refused(site: HostileSite) -> list[dict[str, Any]]:
    return [
        m for t, m in site.results() if t == FALLBACK and m.get("error") == "bad_response_topic"
    ]


async def test_wildcard_reserved_and_foreign_response_topics_are_refused(tmp_path: Path) -> None:
    async with hostile_site(tmp_path) as site:
        before = site.balances()
        for n, topic in enumerate(BAD_RESPONSE_TOPICS):
            body = {"v": 1, "id": f"rt-{n}", "cmd": "reread", "meter": meter_id(1)}
            site.command(body, response_topic=topic, correlation=f"c{n}".encode())
        refused = await eventually(
            lambda: len(_refused(site)) >= len(BAD_RESPONSE_TOPICS) and _refused(site),
            15,
            "every bad response topic answered on cmd/result",
        )
        assert sorted(m["id"] for m in refused) == sorted(
            f"rt-{n}" for n in range(len(BAD_RESPONSE_TOPICS))
        )
        # A good one still answers where it was asked to.
        site.command({"v": 1, "id": "rt-good", "cmd": "reread", "meter": meter_id(1)})
        good = await site.result_of("rt-good")
        assert good["ok"] is True
        assert any(t == REPLIES and m.get("id") == "rt-good" for t, m in site.results())
        assert site.alive()
        assert site.sessions() == 1, "a response topic ended the gateway's MQTT session"
        assert site.balances() == before
        await site.genuine_top_up()
        print(f"response topics: {len(BAD_RESPONSE_TOPICS)} refused, 0 crashes, 1 session")


async def test_a_result_the_broker_acl_refuses_never_ends_the_session(tmp_path: Path) -> None:
    # The gateway's config allows forbidden/+ but the broker's ACL does not: the broker
    # refuses the result (PUBACK "not authorized"), and the session must go on.
    mqtt = {"response_topics": ["headend/+/replies", "forbidden/+"]}
    async with hostile_site(tmp_path, mqtt=mqtt) as site:
        for n in range(5):
            body = {"v": 1, "id": f"acl-{n}", "cmd": "reread", "meter": meter_id(1)}
            site.command(body, response_topic=f"forbidden/{n}")
        site.command({"v": 1, "id": "after-acl", "cmd": "reread", "meter": meter_id(1)})
        assert (await site.result_of("after-acl"))["ok"] is True
        await eventually(
            lambda: site.gateway_log.read_text().count("refused") >= 5, 10, "refusals logged"
        )
        assert site.alive()
        assert site.sessions() == 1, site.gateway_log.read_text()[-2000:]
        await site.genuine_top_up()


async def test_fuzzed_commands_topics_and_response_topics(tmp_path: Path) -> None:
    rng = random.Random(16)
    async with hostile_site(tmp_path) as site:
        before = site.balances()
        payloads = FIXED + [
            json.dumps(_random_json(rng), ensure_ascii=rng.random() < 0.5).encode()
            for _ in range(FUZZ_CASES)
        ]
        meters: list[int | None] = [1, 2, None, 99]
        sent = 0
        for payload in payloads:
            topic = _random_response_topic(rng)
            site.command(payload, meter=rng.choice(meters), response_topic=topic)
            sent += 1

        def answered() -> int:
            return len(site.results())

        await eventually(lambda: answered() >= sent, 60, f"{sent} results")
        errors = [m.get("error") for _t, m in site.results()]
        assert "internal_error" not in errors
        assert site.alive()
        assert site.sessions() == 1
        after = site.balances()
        assert after == before, (before, after)
        assert site.tracebacks() == 0, site.gateway_log.read_text()[-3000:]
        await site.genuine_top_up()
        refused = sum(1 for e in errors if e)
        print(
            f"fuzzed commands: {sent} sent, {answered()} answered, {refused} refused, "
            f"0 crashes, 0 balances moved, 1 session"
        )


async def test_fuzzed_command_topics_are_answered_or_never_heard(tmp_path: Path) -> None:
    rng = random.Random(5)
    async with hostile_site(tmp_path) as site:
        before = site.balances()
        heard: list[str] = []
        unheard: list[str] = []
        for n in range(TOPIC_CASES):
            level, topic, reaches = _random_command_topic(rng)
            request_id = f"topic-{n}"
            body = json.dumps({"v": 1, "id": request_id, "cmd": "reread", "meter": level}).encode()
            site.headend.publish(topic, body, response_topic=REPLIES)
            (heard if reaches else unheard).append(request_id)

        def answers() -> dict[str, dict[str, Any]]:
            return {m["id"]: m for t, m in site.results() if t == REPLIES and m.get("id")}

        await eventually(lambda: set(heard) <= set(answers()), 60, f"{len(heard)} answers")
        # Those the gateway cannot hear (several levels where the meter goes, another
        # gateway's topics, topics the ACL refuses) stay unanswered: once a command sent
        # after them all is answered, none of them has been.
        site.command({"v": 1, "id": "after-topics", "cmd": "reread", "meter": meter_id(1)})
        after = await site.result_of("after-topics")
        assert after["ok"] is True, (after["error"], after["message"])
        got = answers()
        assert not [r for r in unheard if r in got], [got[r] for r in unheard if r in got]
        errors = {got[r]["error"] for r in heard}
        assert errors <= {"malformed", "unknown_meter"}, errors
        assert site.alive()
        assert site.sessions() == 1
        assert site.balances() == before
        assert site.tracebacks() == 0, site.gateway_log.read_text()[-3000:]
        await site.genuine_top_up()
        print(
            f"fuzzed command topics: {TOPIC_CASES} sent, {len(heard)} answered "
            f"({sorted(errors)}), {len(unheard)} never reached the gateway, 0 crashes, 1 session"
        )


#: Characters a topic level may hold (no level separator, no wildcards, no controls).
TOPIC_ASCII = "".join(c for c in string.printable[:95] if c not in "/+#")


def _random_level(rng: random.Random) -> str:
    kind = rng.randrange(7)
    if kind == 0:
        return ""
    if kind == 1:
        return rng.choice([".", "..", " ", " x ", "PE1-", "pe1-000001", "PE1-000001 ", "$x"])
    if kind == 2:
        return meter_id(rng.randint(3, 999_999))  # an id's shape, no such meter
    if kind == 3:
        return "".join(rng.choice(TOPIC_ASCII) for _ in range(rng.randint(200, 400)))
    if kind == 4:
        chars = [rng.choice([rng.randint(0xA0, 0xD7FF), rng.randint(0xE000, 0xFDCF)])]
        return "".join(chr(c) for c in chars * rng.randint(1, 20))
    if kind == 5:
        return rng.choice(["SDM120-7", "dlt645:000000000001", "000000000001", "gw-test"])
    return "".join(rng.choice(TOPIC_ASCII) for _ in range(rng.randint(1, 30)))


def _random_command_topic(rng: random.Random) -> tuple[str, str, bool]:
    """A random level, a command topic under the prefix holding it, and whether the
    gateway hears that topic: with one level where the meter goes, it does (its
    subscription, and the ACL's ``meters/+/cmd``)."""
    level = _random_level(rng)
    kind = rng.randrange(5)
    if kind <= 1:
        return level, f"{ROOT}/meters/{level}/cmd", True
    if kind == 2:
        return level, f"{ROOT}/meters/{level}/{_random_level(rng)}/cmd", False
    if kind == 3:
        return level, f"prepaid/v1/{level}/meters/{meter_id(1)}/cmd", level == GW
    topic = rng.choice([f"{ROOT}/{level}/cmd", f"{ROOT}/cmd/{level}", f"{ROOT}/{level}"])
    return level, topic, False


def _random_response_topic(rng: random.Random) -> str | None:
    kind = rng.randrange(6)
    if kind == 0:
        return None  # 3.1.1 style: the fallback topic
    if kind == 1:
        return f"headend/{rng.choice(['hq', 'x', 'a-b'])}/replies"
    if kind == 2:
        return rng.choice(BAD_RESPONSE_TOPICS[:8])
    if kind == 3:
        return "".join(rng.choice(string.printable[:94]) for _ in range(rng.randint(1, 40)))
    if kind == 4:
        return "headend/" + "".join(chr(rng.randint(0x80, 0x2FFF)) for _ in range(5)) + "/replies"
    return FALLBACK


async def test_signed_commands_replay_across_offsets_and_bind_to_their_gateway(
    tmp_path: Path,
) -> None:
    async with hostile_site(tmp_path) as site:
        m2 = meter_id(2)
        west = timezone(timedelta(hours=-12))
        expires = (datetime.now(UTC) + timedelta(minutes=20)).astimezone(west)
        assert expires.isoformat().endswith("-12:00")
        cut = site.signed(
            {"v": 1, "id": "cut-west", "cmd": "disconnect", "meter": m2, "gateway": GW},
            expires=expires,
        )
        site.command(cut, meter=2)
        assert (await site.result_of("cut-west"))["ok"] is True
        await eventually(lambda: site.sim.state(2)["relay_closed"] is False, 10, "cut")
        # Back on, by a second signed command, then the first one replayed: refused.
        on = site.signed({"v": 1, "id": "on-1", "cmd": "reconnect", "meter": m2, "gateway": GW})
        site.command(on, meter=2)
        assert (await site.result_of("on-1"))["ok"] is True
        await eventually(lambda: site.sim.state(2)["relay_closed"] is True, 10, "reconnected")
        site.command(cut, meter=2)
        replay = await eventually(
            lambda: [m for _t, m in site.results() if m.get("id") == "cut-west"][1:], 10, "replay"
        )
        assert replay[0]["error"] == "replayed_command", replay
        assert site.sim.state(2)["relay_closed"] is True

        # Signed for another gateway, or for none: refused, nothing switched.
        other = site.signed(
            {"v": 1, "id": "cut-other", "cmd": "disconnect", "meter": m2, "gateway": "gw-other"}
        )
        site.command(other, meter=2)
        assert (await site.result_of("cut-other"))["error"] == "wrong_gateway"
        unbound = site.signed({"v": 1, "id": "cut-unbound", "cmd": "disconnect", "meter": m2})
        site.command(unbound, meter=2)
        assert (await site.result_of("cut-unbound"))["error"] == "malformed"
        assert site.sim.state(2)["relay_closed"] is True
        assert site.alive()
        await site.genuine_top_up()


def _prefill_outbox(rows: int) -> Any:
    """Many stored messages for meter 2 (as months of events would leave), before start."""

    def fill(world: GatewayWorld) -> None:
        now = datetime.now(UTC)
        with Store.open(world.store_path) as store:
            state = next(m.state for m in store.load_meters() if m.record.meter_id == meter_id(2))
            for start in range(0, rows, 500):
                count = min(500, rows - start)
                body: dict[str, Any] = {
                    "kind": "event",
                    "event": "tariff_scheduled",
                    "reason": "filler",
                    "details": {"n": start},
                }
                commands = [Publish(meter_id(2), "event", body)] * count
                written = store.commit_cycle([MeterUpdate(state, commands, now)])
                store.mark_acked([r.id for r in written], now)  # delivered long ago

    return fill


async def test_a_resend_never_holds_up_a_top_up(tmp_path: Path) -> None:
    async with hostile_site(tmp_path, prefill=_prefill_outbox(3000)) as site:
        m2 = meter_id(2)
        site.command(
            {"v": 1, "id": "resend-all", "cmd": "resend", "meter": m2, "from_seq": 1}, meter=2
        )
        asked = time.monotonic()
        resend = await site.result_of("resend-all")
        assert resend["ok"] is True, resend["message"]
        assert resend["details"] == {"resent": 1000, "next_seq": 1001}  # bounded per request
        # Asked again while it runs: merged into the one under way (one per meter).
        site.command(
            {"v": 1, "id": "resend-again", "cmd": "resend", "meter": m2, "from_seq": 5}, meter=2
        )
        assert (await site.result_of("resend-again"))["ok"] is True
        await site.genuine_top_up(unit=1)
        topped_up = time.monotonic() - asked

        def resent() -> int:
            return sum(
                1
                for t, m in site.log.pull()
                if t.endswith(f"/meters/{m2}/event") and m.get("reason") == "filler"
            )

        still_to_come = 1000 - resent()
        await eventually(lambda: resent() >= 1000, 30, "the 1,000 resent messages")
        assert still_to_come > 0, "the top-up waited for the resend to finish"
        assert site.alive()
        print(
            f"resend: top-up answered {topped_up:.2f} s after a 1,000-message resend was asked, "
            f"{still_to_come} of its messages still to come"
        )


async def test_a_flood_of_resends_from_one_requester_is_rate_limited(tmp_path: Path) -> None:
    flood = "headend/flood/replies"
    full = REQUESTER_BURST // MAX_ROWS  # full requests one requester's budget pays for
    sent = full + 5
    async with hostile_site(tmp_path, prefill=_prefill_outbox(3 * MAX_ROWS)) as site:
        before = site.balances()
        for n in range(sent):
            body = {
                "v": 1,
                "id": f"flood-{n}",
                "cmd": "resend",
                "meter": meter_id(2),
                "from_seq": 1,
            }
            site.command(body, meter=2, response_topic=flood)

        def flood_results() -> list[dict[str, Any]]:
            return [m for t, m in site.results() if t == flood]

        answers = await eventually(
            lambda: len(flood_results()) >= sent and flood_results(), 20, "the flood answered"
        )
        granted = [m for m in answers if m["ok"]]
        refused = [m for m in answers if not m["ok"]]
        assert full <= len(granted) <= full + 1, answers  # + what refilled meanwhile
        assert {m["error"] for m in refused} == {"rate_limited"}, refused
        assert all(m["details"]["retry_after_s"] > 0 for m in refused), refused
        assert [m["id"] for m in answers[: len(granted)]] == [m["id"] for m in granted]
        # Another requester is not held back: its resends are served, a top-up credited.
        for n, unit in enumerate((1, 2)):
            body = {"v": 1, "id": f"other-{n}", "cmd": "resend", "meter": meter_id(unit)}
            site.command(body | {"from_seq": 1}, meter=unit)
            other = await site.result_of(f"other-{n}")
            assert other["ok"] is True, other
            assert other["details"]["resent"] > 0, other
        await site.genuine_top_up(unit=1)
        assert site.alive()
        assert site.sessions() == 1
        assert site.balances()[meter_id(2)] == before[meter_id(2)]
        print(
            f"resend flood: {sent} from one response topic, {len(granted)} served, "
            f"{len(refused)} refused rate_limited; another requester and a top-up served"
        )


async def test_commands_sent_while_the_gateway_is_down_are_delivered(tmp_path: Path) -> None:
    async with hostile_site(tmp_path) as site:
        before = site.balances()[meter_id(1)][0]
        site.stop_gateway()
        site.counter += 1
        body = {
            "v": 1,
            "id": "while-down",
            "cmd": "topup",
            "token": online_token(1, site.counter, 700),
        }
        site.command(body)
        site.start_gateway()
        await site.wait_online()
        result = await site.result_of("while-down", 15)
        assert result["ok"] is True, result
        await eventually(
            lambda: site.balances()[meter_id(1)][0] == before + 700, 10, "credited once"
        )
        # The same command again (a headend retrying): the token is used once.
        site.command(body)
        again = await eventually(
            lambda: [m for _t, m in site.results() if m.get("id") == "while-down"][1:], 10, "2nd"
        )
        assert again[0]["ok"] is False
        assert site.balances()[meter_id(1)][0] == before + 700
