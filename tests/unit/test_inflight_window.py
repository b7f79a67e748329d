"""The MQTT in-flight window: a hard bound, waiters served in order, a slot handed to a
waiter that is cancelled at that moment passes on, and a resize takes effect."""

from __future__ import annotations

import asyncio

import pytest

from gateway.mqtt_link import InflightWindow

pytestmark = pytest.mark.asyncio


async def test_bound_and_fifo() -> None:
    window = InflightWindow(2)
    assert window.try_take()
    assert window.try_take()
    assert not window.try_take()
    order: list[int] = []

    async def waiter(n: int) -> None:
        await window.take()
        order.append(n)

    tasks = [asyncio.create_task(waiter(n)) for n in range(3)]
    await asyncio.sleep(0)
    assert not window.try_take()  # waiters first, even when a slot frees
    for _ in range(3):
        window.give()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    assert window.used == 2


async def test_a_slot_handed_to_a_cancelled_waiter_passes_on() -> None:
    window = InflightWindow(1)
    assert window.try_take()
    first = asyncio.create_task(window.take())
    second = asyncio.create_task(window.take())
    await asyncio.sleep(0)
    window.give()  # handed to `first`...
    first.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)  # the slot went on to `second`
    assert window.used == 1
    window.give()
    assert window.used == 0


async def test_resize_lowers_the_bound() -> None:
    window = InflightWindow(64)
    window.resize(3)
    assert [window.try_take() for _ in range(4)] == [True, True, True, False]
