"""How many requests to keep in flight, adapted to what the server takes (AIMD).

A batch job or a large ``predict`` must not drive a busy server into refusing it: the
server's queues hold a bounded number of requests and time out the ones that waited too
long. ``AdaptiveLimit`` starts from what the server publishes (its steps' instance counts
and queue sizes), adds one request in flight after as many answers in a row as are in
flight, and halves when the server refuses one for load. A refused request is sent again
when there is room, so a job slows down instead of failing. The same works for a fleet of
replicas behind one address: the limit settles where the fleet stops refusing.
"""
from __future__ import annotations

import asyncio
from typing import Callable

from tce_backends.errors import UsageError


class AdaptiveLimit:
    """At most ``limit`` holders at a time; ``limit`` moves within 1..``ceiling``."""

    def __init__(self, start: int, ceiling: int, on_change: Callable[[int, int], None] | None = None) -> None:
        if ceiling < 1 or not 1 <= start <= ceiling:
            raise UsageError(f"concurrency needs 1 <= start <= ceiling, got start {start}, ceiling {ceiling}")
        self.limit, self.ceiling = start, ceiling
        self.in_flight = 0
        self.refusals = 0
        self.lowest = start
        self._streak = 0
        self._on_change = on_change
        self._room = asyncio.Condition()

    async def __aenter__(self) -> "AdaptiveLimit":
        async with self._room:
            await self._room.wait_for(lambda: self.in_flight < self.limit)
            self.in_flight += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        async with self._room:
            self.in_flight -= 1
            self._room.notify_all()

    def answered(self) -> None:
        """One more answer: after ``limit`` in a row, one more request may be in flight."""
        self._streak += 1
        if self._streak >= self.limit and self.limit < self.ceiling:
            self._set(self.limit + 1)

    def refused(self) -> None:
        """The server refused a request for load: half as many in flight."""
        self.refusals += 1
        self._set(max(1, self.limit // 2))

    def _set(self, limit: int) -> None:
        old, self.limit, self._streak = self.limit, limit, 0
        self.lowest = min(self.lowest, limit)
        if limit != old and self._on_change is not None:
            self._on_change(old, limit)
        if limit > old:
            asyncio.ensure_future(self._wake())

    async def _wake(self) -> None:
        async with self._room:
            self._room.notify_all()


def published_start(step_configs: list[dict], ceiling: int) -> tuple[int, int]:
    """(start, ceiling) from what the server publishes: two requests per instance of the
    narrowest step to start with, and never more than its queue holds."""
    instances, queues = [], []
    for config in step_configs:
        groups = config.get("instance_group") or [{"count": 1}]
        instances.append(sum(int(group.get("count", 1)) for group in groups))
        policy = (config.get("dynamic_batching") or {}).get("default_queue_policy") or {}
        if int(policy.get("max_queue_size", 0) or 0) > 0:
            queues.append(int(policy["max_queue_size"]))
    top = max(1, min([ceiling, *queues]))
    return max(1, min(top, 2 * min(instances or [1]))), top
