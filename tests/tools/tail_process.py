"""A live ``bus-tail --json`` child process read line by line, and a probe that proves its tap is bound.

bus-tail prints nothing until an event arrives, so "ready" is observed, not assumed: the test publishes a
probe event every 0.2 s until the first one comes out, and only then sends what it wants to measure.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from tests.nodes import BIN

Publish = Callable[[str, bytes], Awaitable[None]]


def event_body(routing_key: str, **data: Any) -> bytes:
    """A valid envelope of a made-up type: bus-tail prints any well-formed envelope, known type or not."""
    return orjson.dumps({"specversion": "1.0", "id": routing_key.replace(".", "-"), "type": "test.tools.probe.v1",
                         "source": "thatdam://test/n-tools/probe", "time": "2026-01-01T00:00:00Z", "data": data})


class TailProcess:
    """``bus-tail PATTERN --json ...`` with its stdout read asynchronously (the test's loop keeps publishing)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.records: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, env: dict[str, str], *args: str) -> TailProcess:
        proc = await asyncio.create_subprocess_exec(
            str(BIN / "bus-tail"), *args, "--json", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, limit=16 * 1024 * 1024,
        )
        return cls(proc)

    async def next_record(self, timeout: float = 15.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            line = await self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"bus-tail exited ({await self.proc.wait()}): {await self.stderr()}")
        record: dict[str, Any] = json.loads(line)
        self.records.append(record)
        return record

    async def until(self, routing_key: str, timeout: float = 15.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                record = await self.next_record(timeout)
                if record["routing_key"] == routing_key:
                    return record

    async def wait_bound(self, publish: Publish, probe_key: str, timeout: float = 20.0) -> None:
        """Publish probes until bus-tail prints one: from then on its queue is bound and consuming."""
        async def probe() -> None:
            while True:
                await publish(probe_key, event_body(probe_key))
                await asyncio.sleep(0.2)

        task = asyncio.create_task(probe())
        try:
            await self.until(probe_key, timeout)
        finally:
            task.cancel()

    async def stderr(self) -> str:
        assert self.proc.stderr is not None
        return (await self.proc.stderr.read()).decode(errors="replace")

    async def stop(self) -> int:
        """SIGINT, as a user's Ctrl-C; returns the exit code."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(15):
            return await self.proc.wait()

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
