"""Watching the leader key in Redis from a test: when could the lease held by ``value`` expire at the backend?"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis


@asynccontextmanager
async def key_expiry(redis: aioredis.Redis, key: str, value: str) -> AsyncIterator[list[tuple[float, float]]]:
    """Samples (taken at, expires at) of ``key`` while it holds ``value``, on the test's monotonic clock
    (PTTL plus the middle of the round trip), every 10 ms until the block exits."""
    samples: list[tuple[float, float]] = []

    async def sample() -> None:
        while True:
            before = time.monotonic()
            async with redis.pipeline(transaction=True) as pipe:
                pipe.get(key)
                pipe.pttl(key)
                current, pttl = await pipe.execute()
            if current is not None and current.decode() == value and pttl > 0:
                taken = (before + time.monotonic()) / 2
                samples.append((taken, taken + pttl / 1000))
            await asyncio.sleep(0.01)  # sampling period of a measurement, not a wait for a condition

    task = asyncio.create_task(sample())
    try:
        yield samples
    finally:
        task.cancel()
