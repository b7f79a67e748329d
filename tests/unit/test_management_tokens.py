"""Management tokens carried out (issue 18 item 1), keypad and online, through the pure token intake and the core step: key change to an installed epoch (old-epoch tokens refused after it, counters afresh past 65,535), set maximum power (a load-limit write, refused on a map without one or above what its register holds, and a write the meter cannot take reported as a mismatch), clear tamper, set emergency credit (refused when the settings cannot take it) and the test token (no counter used, nothing forgiven, shown on the display)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from gateway.actuator import MeterTarget
from gateway.core.commands import (
    Command,
    DisplayCode,
    Publish,
    SetLoadLimit,
    TopUpDecision,
    WriteDisplay,
)
from gateway.core.events import (
    LoadLimitObserved,
    ManagementTokenAccepted,
    ReadingReceived,
    TokenRejected,
    TopUpAccepted,
)
from gateway.core.meter_state import MeterState, enrol
from gateway.core.settings import MeterSettings
from gateway.core.states import CreditState
from gateway.core.step import step
from gateway.core.tariff import FlatPricing, Tariff, TariffSchedule
from gateway.core.token_intake import (
    POLICY,
    KeypadEntry,
    KeypadGuard,
    MeterAbilities,
    OnlineTopUp,
    TokenOutcome,
    intake_keypad,
    intake_online,
)
from gateway.load_limit import largest_load_limit_w, write_load_limit
from gateway.meter_io import MeterIO
from gateway.modbus_port import TcpPort
from gateway.store.cycle import encode_body
from meter_sim.clock import VirtualClock
from meter_sim.simulator import Simulator
from protocol.codec import decode, encode, integer_range
from protocol.errors import EncodeError
from protocol.regmap import ValueType, load_map, shipped_map_names
from protocol.tokens.keypad import issue_keypad
from protocol.tokens.keys import derive_meter_key
from protocol.tokens.lockout import KeypadLockout, lockout_after_failure
from protocol.tokens.online import issue_online
from protocol.tokens.replay import ReplayWindow
from protocol.tokens.token_class import TAMPER_MASK_FLAGS, TokenClass
from tests.support.gateway_env import ONLINE_KEY, VENDING_KEY, b64

METER = "PE1-000007"
T0 = datetime(2026, 12, 1, 12, tzinfo=UTC)
PE1 = MeterAbilities(frozenset({1}), largest_load_limit_w(load_map("pe1")))
GUARD = KeypadGuard(KeypadLockout())


def keypad(
    token_class: TokenClass,
    value: int,
    counter: int,
    *,
    window: ReplayWindow | None = None,
    abilities: MeterAbilities = PE1,
    guard: KeypadGuard = GUARD,
    token_epoch: int | None = None,
) -> TokenOutcome:
    window = window or ReplayWindow(0)
    epoch = window.epoch if token_epoch is None else token_epoch
    digits = issue_keypad(VENDING_KEY, METER, epoch, token_class, counter, value)
    key = derive_meter_key(VENDING_KEY, METER, window.epoch)
    entry = KeypadEntry(METER, counter + 1000, digits, T0)
    return intake_keypad(entry, key, window, guard, "KES", abilities)


def meter(balance: int = 1000) -> MeterState:
    tariff = Tariff("KES", FlatPricing(Decimal(100)))
    settings = MeterSettings(TariffSchedule.single(tariff), overdraft_limit=0)
    state = enrol(METER, settings, T0 - timedelta(hours=1), opening_balance=balance)
    state, _ = step(state, ReadingReceived(METER, 10_000, T0 - timedelta(hours=1)), T0)
    return state


def events(commands: list[Command]) -> dict[str, dict[str, Any]]:
    return {
        str(c.body["event"]): c.body
        for c in commands
        if isinstance(c, Publish) and c.kind == "event"
    }


def carried_out(outcome: TokenOutcome, state: MeterState) -> tuple[MeterState, list[Command]]:
    assert isinstance(outcome.event, ManagementTokenAccepted), outcome
    return step(state, outcome.event, T0)


def test_key_change_moves_the_window_to_the_new_epoch_and_old_tokens_fail() -> None:
    outcome = keypad(TokenClass.KEY_CHANGE, 1, 5)
    assert outcome.verdict == "accepted"
    assert outcome.key_epoch == 1
    assert outcome.window == ReplayWindow.fresh(1)
    _, commands = carried_out(outcome, meter())
    assert events(commands)["key_changed"]["details"] == {
        "from_epoch": 0,
        "to_epoch": 1,
        "token_id": f"{METER}:0:5",
        "channel": "keypad",
        "counter": 5,
    }
    assert any(isinstance(c, TopUpDecision) and c.accepted for c in commands)
    after = ReplayWindow.fresh(1)
    # An epoch-0 token vended before the change (fresh counter 6) fails on the new key.
    old = keypad(TokenClass.CREDIT, 500, 6, window=after, token_epoch=0)
    assert old.verdict == "wrong_meter_or_forged"
    new = keypad(TokenClass.CREDIT, 500, 1, window=after)
    assert new.verdict == "accepted"
    assert isinstance(new.event, TopUpAccepted)
    assert new.event.token_id == f"{METER}:1:1"


def test_a_meter_moves_past_counter_65535_by_a_key_change() -> None:
    near_end = ReplayWindow(0, 65_534, 0)
    assert keypad(TokenClass.CREDIT, 100, 65_535, window=near_end).verdict == "accepted"
    change = keypad(TokenClass.KEY_CHANGE, 1, 65_535, window=near_end)
    assert change.window == ReplayWindow.fresh(1)
    assert keypad(TokenClass.CREDIT, 100, 1, window=change.window).verdict == "accepted"


def test_key_change_to_an_epoch_not_installed_is_refused_and_keeps_its_counter() -> None:
    outcome = keypad(TokenClass.KEY_CHANGE, 2, 5)
    assert outcome.verdict == "key_not_held"
    assert outcome.window is None
    assert outcome.lockout is not None
    assert outcome.lockout.keypad == GUARD.keypad  # the token is genuine: no failure counted
    assert outcome.key_epoch is None


def test_key_change_online_twin_and_old_epoch_online_tokens_too_old() -> None:
    keys = {"v1": ONLINE_KEY.public_key()}
    token = issue_online(
        ONLINE_KEY, "v1", METER, 3, TokenClass.KEY_CHANGE, 1, "KES", bytes(16),
        T0, T0 + timedelta(days=1),
    )  # fmt: skip
    top_up = OnlineTopUp(METER, token, T0)
    outcome = intake_online(
        top_up, keys, window=ReplayWindow(0), currency="KES", now=T0, abilities=PE1
    )
    assert (outcome.verdict, outcome.key_epoch) == ("accepted", 1)
    stale = issue_online(
        ONLINE_KEY, "v1", METER, 4, TokenClass.CREDIT, 100, "KES", bytes(16),
        T0, T0 + timedelta(days=1),
    )  # fmt: skip
    again = intake_online(
        OnlineTopUp(METER, stale, T0), keys, window=ReplayWindow.fresh(1), currency="KES", now=T0
    )
    assert again.verdict == "too_old"
    assert b64(b"x")  # the helper module's encoder is the one the gateway's config uses


def test_set_max_power_writes_the_load_limit() -> None:
    outcome = keypad(TokenClass.SET_MAX_POWER, 2500, 1)
    assert outcome.window == ReplayWindow(0).record(1)
    _, commands = carried_out(outcome, meter())
    assert SetLoadLimit(METER, 2500) in commands
    assert events(commands)["max_power_set"]["details"]["watts"] == 2500


def test_set_max_power_on_a_map_without_a_load_limit_is_refused_with_a_reason() -> None:
    no_register = MeterAbilities(frozenset({1}), load_limit_max_w=None)
    outcome = keypad(TokenClass.SET_MAX_POWER, 2500, 1, abilities=no_register)
    assert outcome.verdict == "no_load_limit"
    assert "load_limit register" in outcome.detail
    assert outcome.window is None


def test_set_max_power_above_what_the_register_holds_is_refused_before_its_counter() -> None:
    assert PE1.load_limit_max_w == 65_535  # PE-1's load_limit is a u16 of 1 W
    outcome = keypad(TokenClass.SET_MAX_POWER, 65_540, 1)  # the keypad's next 10 W step
    assert outcome.verdict == "load_limit_out_of_range"
    assert "65535" in outcome.detail
    assert isinstance(outcome.event, TokenRejected)
    assert outcome.event.reason == "load_limit_out_of_range"
    assert outcome.window is None  # the counter stays unused
    assert outcome.lockout is not None
    assert outcome.lockout.keypad == GUARD.keypad  # a genuine token: no failure counted
    _, commands = step(meter(), outcome.event, T0)
    assert not any(isinstance(c, SetLoadLimit | TopUpDecision) for c in commands)
    assert "max_power_set" not in events(commands)
    assert events(commands)["token_rejected"]["reason"] == "load_limit_out_of_range"
    # The refusal is an enum member; the stored and published text is its value as before.
    assert '"reason":"load_limit_out_of_range"' in encode_body(events(commands)["token_rejected"])
    # The largest value the keypad carries within the register is carried out.
    assert keypad(TokenClass.SET_MAX_POWER, 65_530, 1).verdict == "accepted"


def integer_range_of(value_type: ValueType) -> tuple[int, int] | None:
    return integer_range(replace(load_map("pe1").point("load_limit"), type=value_type))


def test_the_largest_load_limit_comes_from_the_registers_type_and_scale() -> None:
    pe1 = load_map("pe1")
    assert largest_load_limit_w(pe1) == 65_535
    tenfold = replace(
        pe1,
        points=tuple(
            replace(p, type=ValueType.I16, scale=Decimal(10)) if p.name == "load_limit" else p
            for p in pe1.points
        ),
    )
    assert largest_load_limit_w(tenfold) == 327_670
    assert [n for n in shipped_map_names() if largest_load_limit_w(load_map(n))] == ["pe1"]


@pytest.mark.parametrize("value_type", [t for t in ValueType if integer_range_of(t)])
def test_an_integer_points_range_is_what_the_codec_encodes(value_type: ValueType) -> None:
    low, high = integer_range_of(value_type) or (0, 0)
    registers = (high - low).bit_length() // 16
    point = replace(load_map("pe1").point("load_limit"), type=value_type, count=registers)
    assert decode(point, encode(point, high)) == high
    assert decode(point, encode(point, low)) == low
    for outside in (low - 1, high + 1):
        with pytest.raises(EncodeError, match="does not fit"):
            encode(point, outside)


def test_set_max_power_online_twin_above_the_register_is_refused_the_same_way() -> None:
    keys = {"v1": ONLINE_KEY.public_key()}
    token = issue_online(
        ONLINE_KEY, "v1", METER, 3, TokenClass.SET_MAX_POWER, 81_910, "KES", bytes(16),
        T0, T0 + timedelta(days=1),
    )  # fmt: skip
    outcome = intake_online(
        OnlineTopUp(METER, token, T0), keys, window=ReplayWindow(0), currency="KES", now=T0,
        abilities=PE1,
    )  # fmt: skip
    assert (outcome.verdict, outcome.window) == ("load_limit_out_of_range", None)
    assert isinstance(outcome.event, TokenRejected)
    assert outcome.event.channel == "online"


@pytest.mark.asyncio
async def test_a_load_limit_the_meter_cannot_take_reaches_the_headend_as_a_mismatch() -> None:
    async with Simulator.start(meters=1, clock=VirtualClock()) as sim:
        port = TcpPort("tcp", *sim.tcp_address, concurrency=1, timeout=2.0)
        target = MeterTarget(METER, port, 1, MeterIO(load_map("pe1")))
        try:
            held = await write_load_limit(target, 2500, T0)
            # Past the token intake's check (a map changed under it): refused by the codec.
            refused = await write_load_limit(target, 70_000, T0)
        finally:
            await port.close()
        assert sim.state(1)["load_limit_w"] == 2500
    assert held == LoadLimitObserved(METER, 2500, 2500, T0)
    assert (refused.requested_w, refused.observed_w) == (70_000, None)
    assert "does not fit u16" in refused.error
    _, commands = step(meter(), refused, T0)
    body = events(commands)["load_limit_mismatch"]
    assert body["details"] == {"requested_w": 70_000, "observed_w": None}
    assert "does not fit" in str(body["reason"])


def test_clear_tamper_clears_the_named_flags_so_a_lasting_tamper_is_reported_again() -> None:
    state = meter()
    state, commands = step(
        state, ReadingReceived(METER, 10_001, T0, cover_open=True, magnetic_tamper=True), T0
    )
    assert "tamper" in events(commands)
    mask = 1 << TAMPER_MASK_FLAGS.index("cover_open")
    state, commands = carried_out(keypad(TokenClass.CLEAR_TAMPER, mask, 1), state)
    body = events(commands)["tamper_cleared"]
    assert body["details"]["cleared"] == ["cover_open"]
    assert state.flags == {"magnetic_tamper"}
    later = T0 + timedelta(minutes=1)
    _, commands = step(
        state, ReadingReceived(METER, 10_002, later, cover_open=True, magnetic_tamper=True), later
    )
    assert events(commands)["tamper"]["reason"] == "cover_open"


def test_set_emergency_credit_changes_the_overdraft_and_the_credit_state() -> None:
    state = meter(balance=150)
    state, commands = carried_out(keypad(TokenClass.SET_EMERGENCY_CREDIT, 500, 1), state)
    assert state.settings.overdraft_limit == 500
    assert events(commands)["emergency_credit_set"]["details"]["previous"] == 0
    later = T0 + timedelta(hours=1)
    state, _ = step(state, ReadingReceived(METER, 12_500, later), later)  # 2.5 kWh: 250
    assert state.ledger.balance == -100
    assert state.credit is CreditState.EMERGENCY  # with no emergency credit: exhausted


def test_an_emergency_credit_the_settings_cannot_take_is_refused_and_changes_nothing() -> None:
    state = meter()
    settings = replace(state.settings, overdraft_limit=500, reconnect_threshold=-400)
    state = replace(state, settings=settings)
    # 100 of emergency credit would leave reconnection at -400, below -100: not a setting.
    after, commands = carried_out(keypad(TokenClass.SET_EMERGENCY_CREDIT, 100, 1), state)
    decisions = [c for c in commands if isinstance(c, TopUpDecision)]
    assert [(d.accepted, d.reason) for d in decisions] == [(False, "invalid_emergency_credit")]
    body = events(commands)["token_rejected"]
    assert body["reason"] == "invalid_emergency_credit"
    assert "reconnect_threshold" in body["details"]["detail"]
    assert "emergency_credit_set" not in events(commands)
    assert after.settings.overdraft_limit == 500
    assert after.settings == settings
    displays = [c for c in commands if isinstance(c, WriteDisplay)]
    assert displays[-1].code is DisplayCode.TOKEN_REJECTED


def test_test_token_uses_no_counter_forgives_nothing_and_shows_on_the_display() -> None:
    locked = KeypadLockout()
    for _ in range(5):
        locked, _ = lockout_after_failure(locked, T0 - timedelta(hours=2), POLICY)
    guard = KeypadGuard(locked)
    outcome = keypad(TokenClass.TEST, 42, 3, guard=guard)
    assert outcome.verdict == "accepted"
    assert outcome.window is None
    assert outcome.lockout is not None
    assert outcome.lockout.keypad == guard.keypad
    _, commands = carried_out(outcome, meter())
    assert not any(isinstance(c, TopUpDecision) for c in commands)
    assert events(commands)["test_token"]["details"]["code"] == 42
    displays = [c for c in commands if isinstance(c, WriteDisplay)]
    assert displays[-1].code is DisplayCode.TEST_TOKEN
    # The same digits again: still accepted (no counter consumed).
    assert keypad(TokenClass.TEST, 42, 3, guard=guard).verdict == "accepted"
