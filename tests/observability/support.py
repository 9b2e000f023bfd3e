"""Publishing numbered events across bus-tail's start, and checking what it printed: all, once, in order."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import orjson

from tests.support import queue_until
from tests.tools.tail_process import TailProcess

Publish = Callable[[str, bytes], Awaitable[None]]
KEY = "capture.obs.seq"  # a recorded channel (topics.Patterns.RECORDED)
PACE_S = 0.01
"""The pump's publishing rate (100/s): pacing a producer, not waiting for anything."""


def seq_body(seq: int, run: str) -> bytes:
    return orjson.dumps({"specversion": "1.0", "id": f"{run}-{seq}", "type": "test.observability.seq.v1",
                         "source": "thatdam://test/obs/pump", "time": datetime.now(UTC).isoformat(),
                         "data": {"seq": seq, "run": run}})


class Numbered:
    """Numbers events 0, 1, 2... for one test run, whichever process or transport publishes them."""

    def __init__(self) -> None:
        self.run = uuid.uuid4().hex[:8]
        self.sent = 0

    async def publish(self, publish: Publish, count: int = 1) -> None:
        for _ in range(count):
            await publish(KEY, seq_body(self.sent, self.run))
            self.sent += 1


async def history_then_live(env: dict[str, str], publish: Publish, numbered: Numbered, *, history: int = 20,
                            live: int = 40, args: tuple[str, ...] = ("--since", "1m")) -> list[int]:
    """Publish ``history`` events, start ``bus-tail capture.obs.# ARGS`` while a pump keeps publishing (so the seam
    falls among them), read until ``live`` events past the history arrived, stop the pump, read the rest.
    Returns the printed sequence numbers, which the caller compares with ``range(numbered.sent)``."""
    await numbered.publish(publish, history)
    tail = await TailProcess.start(env, "capture.obs.#", *args)
    stop = asyncio.Event()

    async def pump() -> None:
        while not stop.is_set():
            await numbered.publish(publish)
            await asyncio.sleep(PACE_S)

    pumping = asyncio.create_task(pump())
    printed: list[int] = []
    try:
        async with asyncio.timeout(60):
            while len(printed) < history + live:
                printed.append(await _seq(tail, numbered.run))
            stop.set()
            await pumping
            while printed[-1] < numbered.sent - 1 and len(printed) < numbered.sent + 5:
                printed.append(await _seq(tail, numbered.run))
    finally:
        pumping.cancel()
        await tail.kill()
    return printed


async def _seq(tail: TailProcess, run: str) -> int:
    record = await tail.next_record(timeout=30)
    data = record["event"]["data"]
    assert data["run"] == run, f"an event of another run: {record}"
    return int(data["seq"])


async def stream_declared(url: str, name: str, timeout: float = 30.0) -> None:
    """Wait until the leader has declared the recorder stream (a passive declare succeeds)."""
    await queue_until(url, name, lambda _messages, _consumers: True, timeout)


async def has_consumer(url: str, name: str, timeout: float = 30.0) -> None:
    """Wait until the durable queue ``name`` exists and a node consumes it (a passive declare reports one)."""
    await queue_until(url, name, lambda _messages, consumers: consumers > 0, timeout)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
