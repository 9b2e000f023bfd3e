"""Test helpers: wait on conditions with deadlines (never sleep-and-hope), collect deliveries."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import aio_pika
from aiormq.exceptions import ChannelNotFoundEntity

from thatdam_bus.transports.base import ACK, Delivery, Outcome


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` until true; fail with ``what`` after ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


@dataclass
class Collector:
    """A delivery callback that records what it got and answers with ``outcome``."""

    outcome: Callable[[Delivery], Outcome] = lambda _d: ACK
    got: list[Delivery] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, delivery: Delivery) -> Outcome:
        self.got.append(delivery)
        self._changed.set()
        return self.outcome(delivery)

    @property
    def keys(self) -> list[str]:
        return [d.routing_key for d in self.got]

    @property
    def bodies(self) -> list[bytes]:
        return [d.body for d in self.got]

    async def wait_count(self, n: int, timeout: float = 10.0) -> None:
        await wait_until(lambda: len(self.got) >= n, timeout, f"{n} deliveries (have {len(self.got)})")

    async def wait_body(self, body: bytes, timeout: float = 10.0) -> None:
        await wait_until(lambda: body in self.bodies, timeout, f"delivery of {body!r}")


async def queue_until(url: str, name: str, ready: Callable[[int, int], bool], timeout: float = 30.0) -> None:
    """Poll queue ``name`` with passive declares until ``ready(messages, consumers)``; a queue that does not
    exist yet is waited for (its 404 closes the channel, so each poll opens its own)."""
    connection = await aio_pika.connect(url)
    async with connection, asyncio.timeout(timeout):
        while True:
            channel = await connection.channel()
            try:
                queue = await channel.declare_queue(name, passive=True)
            except ChannelNotFoundEntity:
                pass
            else:
                await channel.close()
                result = queue.declaration_result
                if ready(result.message_count or 0, result.consumer_count or 0):
                    return
            await asyncio.sleep(0.1)
