"""A manual clock for loop tests: `sleep` waits until the test moves time with `advance`."""

from __future__ import annotations

import asyncio
import heapq
import itertools


class ManualClock:
    """`clock()` reads the time; `await clock.sleep(s)` returns once `advance` passed
    `now + s`. Nothing really sleeps: a test moves time explicitly."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(seconds, 0.0), next(self._seq), future))
        await future

    async def settle(self) -> None:
        """Let every task that can run, run."""
        for _ in range(50):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking sleepers in order and letting them run in between."""
        target = self.now + seconds
        await self.settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            due, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, due)
            if not future.done():
                future.set_result(None)
            await self.settle()
        self.now = target
        await self.settle()
