"""Per-meter keys differ per meter and per epoch, are reproducible from the vending key, and never leak in a repr."""

from __future__ import annotations

import pytest

from protocol.tokens.keys import MeterKey, derive_meter_key

VENDING = bytes(range(32))


def test_keys_differ_by_meter_and_epoch_and_are_stable() -> None:
    a0 = derive_meter_key(VENDING, "PE1-000042", 0)
    assert a0 == derive_meter_key(VENDING, "PE1-000042", 0)
    assert a0 != derive_meter_key(VENDING, "PE1-000043", 0)
    assert a0 != derive_meter_key(VENDING, "PE1-000042", 1)
    assert a0 != derive_meter_key(bytes(32), "PE1-000042", 0)
    assert MeterKey.from_hex(a0.hex()) == a0


def test_repr_hides_the_secret() -> None:
    key = derive_meter_key(VENDING, "PE1-000042", 0)
    assert key.hex() not in repr(key)


@pytest.mark.parametrize("meter_id", ["", "x" * 33, "PE1 42", "PE1-é", "a\x00"])
def test_bad_meter_id_is_refused(meter_id: str) -> None:
    with pytest.raises(ValueError, match="meter id"):
        derive_meter_key(VENDING, meter_id, 0)


@pytest.mark.parametrize(("key", "epoch"), [(bytes(31), 0), (VENDING, -1), (VENDING, 8192)])
def test_bad_key_or_epoch_is_refused(key: bytes, epoch: int) -> None:
    with pytest.raises(ValueError, match=r"vending key|epoch"):
        derive_meter_key(key, "PE1-000042", epoch)


def test_meter_key_length_is_checked() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        MeterKey(bytes(16))
