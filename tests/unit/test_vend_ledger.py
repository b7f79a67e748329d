"""`meter-provision vend` keeps the vendor's counter ledger: each token takes the meter's next counter per key epoch (both channels share it), a counter issued before is refused unless forced, the file is owner-only and a broken one is refused, vends running at once never take the same counter, and the last counter of an epoch is kept for the key-change token that ends it."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.tokens import Accepted, ReplayWindow, TokenClass, derive_meter_key, verify_keypad
from provisioning.__main__ import main
from provisioning.counter_ledger import (
    DEFAULT_LEDGER,
    FIRST_COUNTER,
    KEY_CHANGE_COUNTER,
    LEDGER_ENV,
    CounterLedger,
    LedgerError,
    open_ledger,
)

METER = "PE1-000042"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def vending_key(tmp_path: Path) -> Path:
    path = tmp_path / "vending.key"
    assert main(["keys", "new-vending-key", "--out", str(path)]) == 0
    return path


@pytest.fixture(autouse=True)
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "counters.json"
    monkeypatch.setenv(LEDGER_ENV, str(path))
    return path


def vend(
    capsys: pytest.CaptureFixture[str], key: Path, *extra: str, meter: str = METER
) -> tuple[int, str, str]:
    code = main(["vend", "--vending-key", str(key), "--meter", meter, "--amount", "5", *extra])
    out, err = capsys.readouterr()
    return code, out, err


def counter_of(token: str, key: Path, epoch: int = 0) -> int:
    meter_key = derive_meter_key(bytes.fromhex(key.read_text()), METER, epoch)
    verdict = verify_keypad(token.strip(), METER, meter_key, ReplayWindow.fresh(epoch))
    assert isinstance(verdict, Accepted), verdict
    return verdict.counter


def test_each_vend_takes_the_next_counter_and_says_which(
    vending_key: Path, ledger: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seen = []
    for _ in range(3):
        code, out, err = vend(capsys, vending_key)
        assert code == 0, err
        seen.append(counter_of(out, vending_key))
        assert f"counter {seen[-1]} for {METER}, key epoch 0" in err
        assert str(ledger) in err
    assert seen == [FIRST_COUNTER, FIRST_COUNTER + 1, FIRST_COUNTER + 2]
    assert ledger.stat().st_mode & 0o777 == 0o600
    doc = json.loads(ledger.read_text())
    assert doc["last_counter"] == {METER: {"0": FIRST_COUNTER + 2}}
    assert [p.name for p in ledger.parent.iterdir() if p.name.startswith(".counters")] == []


def test_a_counter_issued_before_is_refused_unless_forced(
    vending_key: Path, ledger: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert vend(capsys, vending_key, "--counter", "9")[0] == 0
    before = ledger.read_bytes()
    for again in ("9", "3"):
        code, out, err = vend(capsys, vending_key, "--counter", again)
        assert (code, out) == (2, "")
        assert f"counter {again} of {METER} (epoch 0) was issued already (the last was 9)" in err
        assert err.count("\n") == 1
        assert ledger.read_bytes() == before
    code, out, _ = vend(capsys, vending_key, "--counter", "3", "--force")
    assert code == 0
    assert counter_of(out, vending_key) == 3
    code, out, _ = vend(capsys, vending_key)  # the next after the highest issued
    assert counter_of(out, vending_key) == 10


def test_meters_epochs_and_both_channels_share_one_ledger(
    vending_key: Path, tmp_path: Path, ledger: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert vend(capsys, vending_key)[0] == 0
    assert vend(capsys, vending_key, meter="PE1-000043")[0] == 0
    code, out, _ = vend(capsys, vending_key, "--epoch", "1")
    assert counter_of(out, vending_key, epoch=1) == FIRST_COUNTER
    signing = tmp_path / "signing.key"
    assert main(["keys", "new-signing-key", "--out", str(signing), "--key-id", "v1"]) == 0
    capsys.readouterr()
    code = main(
        ["vend", "--online", "--signing-key", str(signing), "--key-id", "v1", "--currency",
         "KES", "--meter", METER, "--amount", "5"]
    )  # fmt: skip
    out, _ = capsys.readouterr()
    assert code == 0
    assert json.loads(out)["counter"] == FIRST_COUNTER + 1  # after the keypad token's
    assert json.loads(ledger.read_text())["last_counter"] == {
        METER: {"0": FIRST_COUNTER + 1, "1": FIRST_COUNTER},
        "PE1-000043": {"0": FIRST_COUNTER},
    }


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{", "line 1: not a counter ledger"),
        ('{"format": "other"}', "not a prepaid-edge-vend-counters file"),
        ('{"format": "prepaid-edge-vend-counters", "version": 9}', "version 9"),
        (
            '{"format": "prepaid-edge-vend-counters", "version": 1, "last_counter": {"m": {"0": -4}}}',
            "last_counter must map",
        ),
    ],
)
def test_a_broken_ledger_is_refused_and_left_alone(
    vending_key: Path, ledger: Path, capsys: pytest.CaptureFixture[str], text: str, problem: str
) -> None:
    ledger.write_text(text)
    code, out, err = vend(capsys, vending_key)
    assert (code, out) == (2, "")
    assert problem in err
    assert err.count("\n") == 1
    assert ledger.read_text() == text


def test_the_last_counter_of_an_epoch_is_kept_for_the_key_change(
    vending_key: Path, ledger: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = vend(capsys, vending_key, "--counter", "65534")
    assert code == 0, err
    assert counter_of(out, vending_key) == 65534
    before = ledger.read_bytes()
    for asked in ((), ("--counter", "65535"), ("--counter", "65535", "--force")):
        code, out, err = vend(capsys, vending_key, *asked)
        assert (code, out) == (2, "")
        assert "counter 65535 of PE1-000042 (epoch 0) is kept for the key-change token" in err
        assert "vend that now (--class key-change --value 1" in err
        assert err.count("\n") == 1
        assert ledger.read_bytes() == before
    key_change = ["vend", "--vending-key", str(vending_key), "--meter", METER]
    code = main([*key_change, "--class", "key-change", "--value", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert counter_of(out, vending_key) == 65535
    assert "counter 65535 for PE1-000042, key epoch 0 (the last was 65534)" in err
    code = main([*key_change, "--class", "key-change", "--value", "1"])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert "used every counter of key epoch 0 (last 65535)" in err
    assert "vend with --epoch 1" in err
    code, out, err = vend(capsys, vending_key, "--epoch", "1")
    assert code == 0, err
    assert counter_of(out, vending_key, epoch=1) == FIRST_COUNTER


@pytest.mark.asyncio
async def test_vends_at_once_never_take_the_same_counter(vending_key: Path, ledger: Path) -> None:
    async def one() -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "provisioning", "vend", "--vending-key", str(vending_key),
            "--meter", METER, "--amount", "5",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=os.environ | {"PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        out, err = await proc.communicate()
        assert proc.returncode == 0, err
        return out.decode()

    tokens = await asyncio.gather(*(one() for _ in range(8)))
    counters = sorted(counter_of(t, vending_key) for t in tokens)
    assert counters == list(range(FIRST_COUNTER, FIRST_COUNTER + 8))
    recorded = json.loads(await asyncio.to_thread(ledger.read_text))
    assert recorded["last_counter"][METER]["0"] == FIRST_COUNTER + 7


@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.integers(0, 70_000), st.integers(65_530, 65_536)),
            st.booleans(),
            st.sampled_from(TokenClass),
        ),
        max_size=30,
    )
)
@settings(deadline=None)
def test_the_ledger_never_hands_out_an_issued_counter_unforced(
    asks: list[tuple[int | None, bool, TokenClass]],
) -> None:
    book = CounterLedger(Path("unused"), {})
    issued: set[int] = set()
    for asked, force, token_class in asks:
        last = book.last(METER, 0)
        try:
            counter = book.take(METER, 0, asked, force=force, token_class=token_class)
        except LedgerError:
            assert (
                asked is None
                or not 0 <= asked <= 65535
                or (last is not None and asked <= last)
                or (asked == KEY_CHANGE_COUNTER and token_class is not TokenClass.KEY_CHANGE)
            )
            continue
        if not force:
            assert counter not in issued
            assert last is None or counter > last
        assert counter < KEY_CHANGE_COUNTER or token_class is TokenClass.KEY_CHANGE
        issued.add(counter)
        assert book.last(METER, 0) == max(issued)


def test_open_ledger_creates_nothing_until_a_commit(tmp_path: Path) -> None:
    path = tmp_path / "new.json"
    with open_ledger(path) as book:
        assert book.take(METER, 0, None) == FIRST_COUNTER
    assert not path.exists()  # not committed: nothing recorded
    with open_ledger(path) as book:
        assert book.take(METER, 0, None) == FIRST_COUNTER
        book.commit()
    assert json.loads(path.read_text())["last_counter"] == {METER: {"0": FIRST_COUNTER}}


def test_docs_name_the_ledger_as_the_code_does() -> None:
    text = " ".join((ROOT / "docs" / "tokens.md").read_text(encoding="utf-8").split())
    assert f"`${LEDGER_ENV}`" in text
    assert f"`{DEFAULT_LEDGER}`" in text
    assert f"({FIRST_COUNTER} for a meter and epoch new to the ledger)" in text
    assert "mode 0600" in text
    assert "`FILE.lock`" in text
    assert (
        f"the last counter of an epoch, {KEY_CHANGE_COUNTER:,}, is kept for the key-change" in text
    )
