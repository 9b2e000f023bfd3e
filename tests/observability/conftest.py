"""Nodes of the observability tests on the real RabbitMQ and Redis: one unique prefix per test, and everything
declared under it (the recorder stream, registered queues, both exchanges, the Redis keys) gone at teardown."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.nodes import NodeProcess
from tests.observability.support import solo
from thatdam_bus.recorder.amqp_stream import stream_name


@pytest.fixture
def solo_node(state_dir: Path) -> Iterator[NodeProcess]:
    """A solo node on the embedded broker, its flight recorder running; killed at teardown."""
    node = solo(state_dir)
    try:
        yield node
    finally:
        node.kill()


@pytest.fixture
async def cluster_env(rabbitmq: str, redis_url: str, prefix: str,
                      amqp_cleanup: Callable[[str], None]) -> AsyncIterator[dict[str, str]]:
    """The environment of a node on this test's prefix. Stop its processes inside the test (or in a fixture
    requested after this one): a node still running at teardown would declare again what is deleted."""
    amqp_cleanup(stream_name(prefix))
    try:
        yield {"THATDAM_AMQP_URL": rabbitmq, "THATDAM_REDIS_URL": redis_url, "THATDAM_PREFIX": prefix}
    finally:
        client = aioredis.Redis.from_url(redis_url)
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
