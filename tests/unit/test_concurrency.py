"""tce_client.concurrency: requests in flight follow what the server takes."""
from __future__ import annotations

import asyncio

import pytest

from tce_backends.errors import UsageError
from tce_client.concurrency import AdaptiveLimit, published_start


def test_the_limit_grows_after_answers_and_halves_on_a_refusal():
    changes = []
    limit = AdaptiveLimit(2, 8, on_change=lambda old, new: changes.append((old, new)))

    async def run() -> None:
        for _ in range(2):
            limit.answered()
        assert limit.limit == 3
        for _ in range(3):
            limit.answered()
        assert limit.limit == 4
        limit.refused()
        assert limit.limit == 2
        limit.refused()
        limit.refused()
        assert limit.limit == 1  # never below one
    asyncio.run(run())
    assert changes == [(2, 3), (3, 4), (4, 2), (2, 1)] and limit.lowest == 1 and limit.refusals == 3


def test_never_more_holders_than_the_limit():
    limit = AdaptiveLimit(3, 3)
    peak = 0

    async def hold() -> None:
        nonlocal peak
        async with limit:
            peak = max(peak, limit.in_flight)
            await asyncio.sleep(0.01)

    async def run() -> None:
        await asyncio.gather(*(hold() for _ in range(20)))
    asyncio.run(run())
    assert peak == 3 and limit.in_flight == 0


def test_the_start_comes_from_the_published_steps():
    steps = [{"instance_group": [{"count": 2}], "dynamic_batching": {"default_queue_policy": {"max_queue_size": 128}}},
             {"instance_group": [{"count": 1}], "dynamic_batching": {"default_queue_policy": {"max_queue_size": 6}}},
             {"instance_group": [{"count": 1}]}]
    assert published_start(steps, ceiling=32) == (2, 6)  # two per narrowest step; never beyond its queue
    assert published_start([], ceiling=4) == (2, 4)
    with pytest.raises(UsageError, match="1 <= start <= ceiling"):
        AdaptiveLimit(5, 4)
