"""The sealed `next_keys` of an export (METER@EPOCH -> key) parse to (meter, epoch, key) or are refused with a ProvisionError naming the entry, whatever the text."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.tokens.keys import MAX_EPOCH
from provisioning.errors import ProvisionError
from provisioning.sealed_keys import later_keys

KEY = bytes(range(16))


def test_meter_and_epoch_are_split_at_the_last_at() -> None:
    assert later_keys({"PE1-000001@3": KEY, "odd@name@12": KEY}) == [
        ("PE1-000001", 3, KEY),
        ("odd@name", 12, KEY),
    ]


@pytest.mark.parametrize("name", ["PE1-000001", "PE1-000001@", "PE1@0", f"PE1@{MAX_EPOCH + 1}",
                                  "PE1@²", "PE1@-1", "PE1@1 "])  # fmt: skip
def test_bad_names_are_refused_by_name(name: str) -> None:
    with pytest.raises(ProvisionError, match="next_keys"):
        later_keys({name: KEY})


@given(st.text())
def test_any_name_parses_or_is_refused(name: str) -> None:
    try:
        [(meter, epoch, key)] = later_keys({name: KEY})
    except ProvisionError:
        return
    head, _, tail = name.rpartition("@")
    assert (head, int(tail)) == (meter, epoch)
    assert 1 <= epoch <= MAX_EPOCH
    assert key == KEY
