"""The consumer tasks of one subscription: started together, cancelled together, never orphaned.

Shared by the embedded transport and the socket client, whose subscriptions both run their callback in a few
worker tasks (``min(prefetch, MAX_WORKERS)``) owned by the transport rather than left to the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)

MAX_WORKERS = 64
"""Concurrent callbacks per subscription: prefetch bounds unacked messages, which in-process means
concurrency, but a large prefetch should not mean hundreds of idle tasks."""

STOP_TIMEOUT = 5.0


def worker_count(prefetch: int) -> int:
    return max(1, min(prefetch, MAX_WORKERS))


class Workers:
    """A small owned task group with a deadline on shutdown."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, count: int, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        loop = asyncio.get_running_loop()
        for index in range(count):
            task = loop.create_task(factory(), name=f"{self.name}#{index}")
            self._tasks.add(task)
            task.add_done_callback(self._reap)

    def cancel(self) -> list[asyncio.Task[None]]:
        """Cancel every worker except the calling one (a callback may cancel its own subscription: that
        worker finishes its current message and then sees the subscription closed)."""
        current = asyncio.current_task()
        others = [task for task in self._tasks if task is not current]
        for task in others:
            task.cancel()
        return others

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        others = self.cancel()
        if not others:
            return
        _, pending = await asyncio.wait(others, timeout=timeout)
        if pending:
            log.warning("%s: %d worker(s) ignored cancellation for %.1fs", self.name, len(pending), timeout)

    def _reap(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: worker died", self.name, exc_info=task.exception())
