"""The vending CLI makes owner-only key files, refuses key files others can read, and prints tokens the verifiers accept (20 digits in groups of four, or the signed online token JSON)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.tokens import (
    Accepted,
    Channel,
    MeterKey,
    ReplayWindow,
    TokenClass,
    derive_meter_key,
    verify_keypad,
    verify_online,
)
from protocol.tokens.online import b64url_decode, load_public_key
from provisioning.__main__ import main
from provisioning.counter_ledger import LEDGER_ENV
from provisioning.vend_cli import VendError, amount_to_minor

METER = "PE1-000042"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every vend of a test records its counters in the test's own ledger."""
    path = tmp_path / "vend-counters.json"
    monkeypatch.setenv(LEDGER_ENV, str(path))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def vending_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    path = tmp_path / "vending.key"
    assert run(capsys, "keys", "new-vending-key", "--out", str(path))[0] == 0
    return path


def test_new_vending_key_is_owner_only_and_never_overwritten(
    vending_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert vending_key.stat().st_mode & 0o777 == 0o600
    assert len(bytes.fromhex(vending_key.read_text())) == 32
    before = vending_key.read_text()
    code, _, err = run(capsys, "keys", "new-vending-key", "--out", str(vending_key))
    assert code == 2
    assert "refusing to overwrite" in err
    assert vending_key.read_text() == before


def test_meter_key_export_matches_derivation(
    vending_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        capsys,
        "keys",
        "meter-key",
        "--vending-key",
        str(vending_key),
        "--meter",
        METER,
        "--epoch",
        "2",
    )
    assert code == 0
    expected = derive_meter_key(bytes.fromhex(vending_key.read_text()), METER, 2)
    assert MeterKey.from_hex(out) == expected
    out_file = tmp_path / "meter.key"
    run(
        capsys,
        "keys",
        "meter-key",
        "--vending-key",
        str(vending_key),
        "--meter",
        METER,
        "--epoch",
        "2",
        "--out",
        str(out_file),
    )
    assert out_file.stat().st_mode & 0o777 == 0o600
    assert MeterKey.from_hex(out_file.read_text()) == expected


def test_vend_prints_grouped_digits_the_gateway_accepts(
    vending_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        capsys,
        "vend",
        "--vending-key",
        str(vending_key),
        "--meter",
        METER,
        "--amount",
        "12.50",
        "--counter",
        "7",
    )
    assert code == 0
    groups = out.split()
    assert [len(g) for g in groups] == [4, 4, 4, 4, 4]
    meter_key = derive_meter_key(bytes.fromhex(vending_key.read_text()), METER, 0)
    result = verify_keypad(out.strip(), METER, meter_key, ReplayWindow.fresh(0))
    assert result == Accepted(METER, TokenClass.CREDIT, 7, 1250, 0, Channel.KEYPAD)
    # The same token from the meter's own key file.
    key_file = tmp_path / "meter.key"
    run(
        capsys,
        "keys",
        "meter-key",
        "--vending-key",
        str(vending_key),
        "--meter",
        METER,
        "--out",
        str(key_file),
    )
    code, again, _ = run(
        capsys,
        "vend",
        "--meter-key",
        str(key_file),
        "--meter",
        METER,
        "--amount",
        "12.50",
        "--counter",
        "7",
        "--force",  # the same counter again, on purpose
    )
    assert (code, again) == (0, out)


def test_vend_rounds_down_and_says_so(
    vending_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys,
        "vend",
        "--vending-key",
        str(vending_key),
        "--meter",
        METER,
        "--amount",
        "12345.67",
        "--counter",
        "1",
    )
    assert code == 0
    assert "carries 12,345.00 of 12,345.67" in err
    meter_key = derive_meter_key(bytes.fromhex(vending_key.read_text()), METER, 0)
    result = verify_keypad(out.strip(), METER, meter_key, ReplayWindow.fresh(0))
    assert isinstance(result, Accepted)
    assert result.amount == 1_234_500


def test_management_token(vending_key: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "vend",
        "--vending-key",
        str(vending_key),
        "--meter",
        METER,
        "--counter",
        "3",
        "--class",
        "set-max-power",
        "--value",
        "5000",
    )
    assert code == 0
    meter_key = derive_meter_key(bytes.fromhex(vending_key.read_text()), METER, 0)
    result = verify_keypad(out.strip(), METER, meter_key, ReplayWindow.fresh(0))
    assert isinstance(result, Accepted)
    assert (result.token_class, result.amount) == (TokenClass.SET_MAX_POWER, 5000)


@pytest.mark.parametrize(
    ("money", "currency", "minor"), [("5.00", "KES", 500), ("5", "KES", 500), ("81", "JPY", 81)]
)
def test_emergency_credit_is_typed_in_currency_units_and_carried_in_minor_units(
    vending_key: Path, capsys: pytest.CaptureFixture[str], money: str, currency: str, minor: int
) -> None:
    code, out, err = run(
        capsys, "vend", "--vending-key", str(vending_key), "--meter", METER,
        "--class", "set-emergency-credit", "--amount", money, "--currency", currency,
    )  # fmt: skip
    assert code == 0, err
    meter_key = derive_meter_key(bytes.fromhex(vending_key.read_text()), METER, 0)
    result = verify_keypad(out.strip(), METER, meter_key, ReplayWindow.fresh(0))
    assert isinstance(result, Accepted)
    assert (result.token_class, result.amount) == (TokenClass.SET_EMERGENCY_CREDIT, minor)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o610])
def test_key_file_others_can_access_is_refused(
    vending_key: Path, capsys: pytest.CaptureFixture[str], mode: int
) -> None:
    vending_key.chmod(mode)
    code, out, err = run(
        capsys,
        "vend",
        "--vending-key",
        str(vending_key),
        "--meter",
        METER,
        "--amount",
        "1",
        "--counter",
        "1",
    )
    assert code == 2
    assert out == ""
    assert f"accessible by group/others (mode {mode:04o})" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--amount", "12.505"], "more than 2 decimals"),
        (["--amount", "abc"], "is not an amount like 12.50"),
        (["--amount", "1e3"], "is not an amount like 12.50"),
        (["--amount", "-5"], "--amount -5 must be positive"),
        (["--amount", "1", "--currency", "JPY", "--decimals", "2"], "JPY has 0 decimals"),
        (["--amount", "1.5", "--currency", "JPY"], "more than 0 decimals"),
        (["--amount", "0"], "must be 0.01 to 100,000.00"),
        (["--amount", "100000.01"], "must be 0.01 to 100,000.00"),
        (["--amount", "1", "--counter", "70000"], "counter"),
        (["--value", "5"], "--class credit takes --amount (currency units), not --value"),
        (
            ["--class", "set-emergency-credit", "--value", "500"],
            "--class set-emergency-credit takes --amount (currency units), not --value",
        ),
        (["--class", "set-emergency-credit"], "takes --amount (currency units)"),
        (["--class", "set-emergency-credit", "--amount", "81.92"], "must be 0.00 to 81.91"),
        (["--class", "set-emergency-credit", "--amount", "-1"], "--amount -1 must be positive"),
        (["--class", "clear-tamper", "--amount", "1"], "takes --value"),
        (["--amount", "1", "--meter", "bad id"], "meter id"),
    ],
)
def test_bad_requests_get_one_clear_error(
    vending_key: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    base = ["vend", "--vending-key", str(vending_key), "--meter", METER, "--counter", "1"]
    code, out, err = run(capsys, *base, *args)
    assert code == 2
    assert out == ""
    assert message in err
    assert err.count("\n") == 1


def test_missing_or_bad_key_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        capsys,
        "vend",
        "--vending-key",
        str(tmp_path / "nope"),
        "--meter",
        METER,
        "--amount",
        "1",
        "--counter",
        "1",
    )
    assert (code, "cannot read" in err) == (2, True)
    junk = tmp_path / "junk.key"
    junk.write_text("not hex\n")
    junk.chmod(0o600)
    code, _, err = run(
        capsys,
        "vend",
        "--vending-key",
        str(junk),
        "--meter",
        METER,
        "--amount",
        "1",
        "--counter",
        "1",
    )
    assert (code, "not a hex key file" in err) == (2, True)
    short = tmp_path / "short.key"
    short.write_text("00" * 16)
    short.chmod(0o600)
    code, _, err = run(
        capsys,
        "vend",
        "--vending-key",
        str(short),
        "--meter",
        METER,
        "--amount",
        "1",
        "--counter",
        "1",
    )
    assert (code, "holds 16 bytes" in err) == (2, True)


def test_online_vend_prints_a_token_the_gateway_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    signing = tmp_path / "signing.key"
    code, out, _ = run(capsys, "keys", "new-signing-key", "--out", str(signing), "--key-id", "v1")
    assert code == 0
    assert signing.stat().st_mode & 0o777 == 0o600
    public = out.strip().rsplit(" = ", 1)[1]
    code, out, _ = run(
        capsys, "vend", "--online", "--signing-key", str(signing), "--key-id", "v1",
        "--currency", "KES", "--meter", METER, "--amount", "12345.67", "--counter", "9",
        "--txn-id", "00112233445566778899aabbccddeeff", "--issued-at", "2026-11-28T11:00:00+00:00",
    )  # fmt: skip
    assert code == 0
    doc = json.loads(out)
    assert doc["v"] == 1
    assert (doc["meter"], doc["amount"], doc["counter"]) == (METER, 1_234_567, 9)
    result = verify_online(
        doc["token"], METER, {"v1": load_public_key(public)}, ReplayWindow.fresh(0), NOW
    )
    assert isinstance(result, Accepted)
    assert (result.amount, result.currency, result.txn_id) == (
        1_234_567,
        "KES",
        "00112233445566778899aabbccddeeff",
    )
    assert b64url_decode(doc["token"])[0] == 1


def test_online_vend_needs_its_keys(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        capsys, "vend", "--online", "--meter", METER, "--amount", "1", "--counter", "1"
    )
    assert code == 2
    assert "--signing-key" in err


def test_other_commands_still_parse_beside_vend(capsys: pytest.CaptureFixture[str]) -> None:
    # Issue 7 built `scan`; without its required --bus it is a usage error.
    with pytest.raises(SystemExit) as exited:
        main(["scan"])
    assert exited.value.code == 2
    assert "--bus" in capsys.readouterr().err


def test_module_entry_point_runs(vending_key: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "provisioning", "vend", "--vending-key", str(vending_key), "--meter", METER, "--amount", "5", "--counter", "2"],
        capture_output=True, text=True, check=False, timeout=60, env=os.environ | {"PYTHONPATH": str(Path(__file__).parents[2])},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.split()) == 5


@given(st.decimals(min_value=0, max_value=10**7, places=2, allow_nan=False))
def test_amount_parsing_is_exact(amount: Decimal) -> None:
    assert amount_to_minor(str(amount), 2) == int(amount * 100)


@given(
    st.text(max_size=30)
    | st.from_regex(r"-?[0-9]{0,5}(\.[0-9]{0,4})?(e[+-]?[0-9]{1,12})?", fullmatch=True)
)
def test_amount_parsing_refuses_clearly_or_returns_an_int(text: str) -> None:
    try:
        assert isinstance(amount_to_minor(text, 2), int)
    except VendError as exc:
        assert "--amount" in str(exc)
