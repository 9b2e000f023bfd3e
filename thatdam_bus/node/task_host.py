"""Owning services' background tasks: started when their role becomes active, cancelled and awaited after.

The owner of every task is this object (no task is left unreferenced); a task that crashes is logged with its
traceback and not restarted by itself: the service decides about retries inside its task (capture does, with
backoff), so a crash here is a bug to see, not to hide.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from thatdam_bus.context import TaskContext
from thatdam_bus.service import TaskSpec

log = logging.getLogger("thatdam_bus.node.tasks")
STOP_TIMEOUT_S = 5.0


class TaskHost:
    """Runs ``TaskSpec`` coroutines by qualified name; ``sync`` makes the running set equal the wanted one."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def sync(self, wanted: dict[str, tuple[TaskSpec, TaskContext]]) -> None:
        for name in [n for n in self._tasks if n not in wanted]:
            await self._stop(name)
        for name, (spec, ctx) in wanted.items():
            if name not in self._tasks or self._tasks[name].done():
                self._tasks[name] = asyncio.create_task(self._guarded(spec, ctx), name=name)

    async def stop_all(self) -> None:
        for name in list(self._tasks):
            await self._stop(name)

    @property
    def running(self) -> list[str]:
        return sorted(name for name, task in self._tasks.items() if not task.done())

    async def _stop(self, name: str) -> None:
        task = self._tasks.pop(name)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await task

    @staticmethod
    async def _guarded(spec: TaskSpec, ctx: TaskContext) -> None:
        try:
            await spec.fn(ctx)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("service task %s crashed", spec.qualified_name)
