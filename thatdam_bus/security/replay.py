"""The replay guard: nonces seen recently, bounded in count and in time.

A nonce is remembered for ``window_s`` (intent TTL plus allowed skew): after that its intent would be refused
as expired anyway, so forgetting it opens no hole. The count bound protects memory; when it is hit the
oldest nonce goes first (and a warning says so), since only signed intents ever reach the cache.

``claim`` reserves a nonce while its intent is handled; ``release`` gives it back when the handler asked for a
retry, so the broker's redelivery of the *same* message is not mistaken for a replay. A second copy arriving
while the first is in flight, or after it was handled, is a replay.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

from thatdam_bus.security.signing import WallClock

log = logging.getLogger("thatdam_bus.security")


class NonceCache:
    """Nonce -> forget-after time, oldest first. Not thread-safe: it lives on the node's event loop."""

    def __init__(self, window_s: float, capacity: int = 100_000, clock: WallClock = time.time) -> None:
        if window_s <= 0 or capacity < 1:
            raise ValueError("window_s must be > 0 and capacity >= 1")
        self.window_s = window_s
        self.capacity = capacity
        self._clock = clock
        self._until: OrderedDict[str, float] = OrderedDict()
        self.evicted = 0
        """Nonces dropped before their window ended because the cache was full (a health statistic)."""

    def __len__(self) -> int:
        self._expire(self._clock())
        return len(self._until)

    def __contains__(self, nonce: object) -> bool:
        now = self._clock()
        self._expire(now)
        return isinstance(nonce, str) and self._until.get(nonce, now) > now

    def claim(self, nonce: str) -> bool:
        """Remember ``nonce``; False when it is already remembered (a replay within its window)."""
        now = self._clock()
        self._expire(now)
        if nonce in self._until:
            return False
        self._until[nonce] = now + self.window_s
        if len(self._until) > self.capacity:
            self._until.popitem(last=False)
            self.evicted += 1
            if self.evicted == 1:
                log.warning("nonce cache full (%d): evicting the oldest nonces before their window ends; "
                            "raise THATDAM_NONCE_CACHE_SIZE", self.capacity)
        return True

    def release(self, nonce: str) -> None:
        """Forget a claimed nonce: its intent will be redelivered for another attempt."""
        self._until.pop(nonce, None)

    def _expire(self, now: float) -> None:
        """Drop entries whose window ended. Entries are appended with ``now + window``, so the oldest expire
        first; a clock step backwards only delays forgetting, it never forgets early."""
        while self._until:
            nonce, until = next(iter(self._until.items()))
            if until > now:
                break
            del self._until[nonce]

    def __repr__(self) -> str:
        return f"<NonceCache size={len(self._until)}/{self.capacity} window={self.window_s}s>"
