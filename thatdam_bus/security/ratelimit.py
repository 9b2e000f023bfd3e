"""Per-source rate limit on intents: one token bucket per envelope ``source``, bounded in memory.

Intents are commands, and each one can start real work (a capture). A script stuck in a loop, or one key holder
flooding the bus, must not monopolise a node: every source gets ``rate`` intents per second with bursts of up to
``burst``, and the rest are refused with the reason ``rate limited`` (dead-lettered and answered, like every
refusal) before any handler work.

The gate applies it to authentic intents only (after the signature check): the ``source`` is inside the signed
envelope, so it names who really sent the intent. Counting before the check would let anyone spend a real
source's budget by forging its name, for the price of an unsigned message.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from thatdam_bus.types import Clock

DEFAULT_SOURCES = 10_000


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets by key. ``allow(key)`` takes one token if there is one. At most ``max_sources`` buckets are
    kept; the least recently used goes first (it would be refilled by then in any realistic case)."""

    def __init__(self, rate: float, burst: int, *, clock: Clock = time.monotonic,
                 max_sources: int = DEFAULT_SOURCES) -> None:
        if rate <= 0 or burst < 1 or max_sources < 1:
            raise ValueError("rate must be > 0, burst >= 1 and max_sources >= 1")
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self.refused = 0
        """How many requests were refused so far (a health statistic)."""

    def allow(self, key: str) -> bool:
        now = self._clock()
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = _Bucket(float(self.burst), now)
        else:
            elapsed = max(0.0, now - bucket.updated)  # a clock that steps back refills nothing
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate)
            bucket.updated = now
        self._buckets[key] = bucket
        if len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        self.refused += 1
        return False

    def __len__(self) -> int:
        """How many sources have a bucket now."""
        return len(self._buckets)

    def __repr__(self) -> str:
        return f"<RateLimiter {self.rate:g}/s burst={self.burst} sources={len(self._buckets)} refused={self.refused}>"
