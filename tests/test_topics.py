"""Topic matching: unit cases, and the property that our matcher agrees with what real RabbitMQ routes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import aio_pika
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from thatdam_bus import topics
from thatdam_bus.topics import topic_matches

CASES = [
    ("a.#", "a", True),  # zero-word '#': FastStream's in-memory matcher says False
    ("#.b", "b", True),
    ("#.b.c", "a.b.x.b.c", True),
    ("#", "", True),
    ("#", "a.b.c", True),
    ("a.*", "a", False),
    ("a.*", "a.b", True),
    ("a.*", "a.b.c", False),
    ("*.*", "a.b", True),
    ("a.#.c", "a.c", True),
    ("a.#.c", "a.b.b.c", True),
    ("a.#.c", "a.b.b.d", False),
    ("#.#", "a", True),
    ("a.#.#.b", "a.b", True),
    ("*.#", "a", True),
    ("*.#", "", False),
    ("*", "", False),  # found by the property test: RabbitMQ treats an empty key as zero words
    ("node.*.heartbeat", "node.n1.heartbeat", True),
    ("node.*.heartbeat", "node.n1.joined", False),
]


@pytest.mark.parametrize(("pattern", "key", "expected"), CASES)
def test_known_cases(pattern: str, key: str, expected: bool) -> None:
    assert topic_matches(pattern, key) is expected


def test_builders_refuse_words_that_would_change_routing() -> None:
    assert topics.frame_ready("n1", "video0") == "frame.n1.video0.ready"
    for bad in ["a.b", "*", "#", ""]:
        with pytest.raises(ValueError):
            topics.node_heartbeat(bad)
    assert topics.device_word("/dev/video0") == "dev_video0"


WORDS = st.sampled_from(["a", "b", "c"])
KEYS = st.lists(WORDS, min_size=0, max_size=5).map(".".join)
PATTERNS = st.lists(st.sampled_from(["a", "b", "c", "*", "#"]), min_size=1, max_size=5).map(".".join)
SENTINEL = "sentinel"


@pytest.fixture(scope="module")
def rabbit_loop() -> Iterator[tuple[asyncio.AbstractEventLoop, aio_pika.abc.AbstractChannel]]:
    """One loop and one channel for the whole property test (connecting per example would dominate)."""
    from tests.conftest import AMQP_URL, require_service

    require_service("RabbitMQ", "127.0.0.1", 5672)
    async def open_channel() -> tuple[aio_pika.abc.AbstractConnection, aio_pika.abc.AbstractChannel]:
        connection = await aio_pika.connect(AMQP_URL)
        return connection, await connection.channel()

    loop = asyncio.new_event_loop()
    connection, channel = loop.run_until_complete(open_channel())
    yield loop, channel
    loop.run_until_complete(connection.close())
    loop.close()


async def _rabbit_routes(channel: aio_pika.abc.AbstractChannel, pattern: str, keys: list[str]) -> list[str]:
    """The keys RabbitMQ delivers to a queue bound with ``pattern``, in publish order."""
    exchange = await channel.declare_exchange(f"t-topics-{uuid.uuid4().hex[:8]}", aio_pika.ExchangeType.TOPIC)
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    try:
        await queue.bind(exchange, pattern)
        await queue.bind(exchange, SENTINEL)
        for key in [*keys, SENTINEL]:
            await exchange.publish(aio_pika.Message(key.encode() or b"<empty>"), routing_key=key)
        got: list[str] = []
        async with asyncio.timeout(10), queue.iterator() as messages:
            async for message in messages:
                await message.ack()
                body = message.body.decode()
                if message.routing_key == SENTINEL:
                    break
                got.append("" if body == "<empty>" else body)
        return got
    finally:
        await queue.delete(if_unused=False, if_empty=False)
        await exchange.delete()


@pytest.mark.broker
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pattern=PATTERNS, keys=st.lists(KEYS, min_size=1, max_size=8, unique=True))
@example(pattern="a.#", keys=["a", "a.b"])
@example(pattern="#.b", keys=["b", "a.b"])
@example(pattern="#.b.c", keys=["a.b.x.b.c", "b.c"])
def test_matcher_agrees_with_rabbitmq(rabbit_loop, pattern: str, keys: list[str]) -> None:  # type: ignore[no-untyped-def]
    loop, channel = rabbit_loop
    routed = loop.run_until_complete(_rabbit_routes(channel, pattern, keys))
    ours = [key for key in keys if topic_matches(pattern, key)]
    assert ours == routed, f"pattern {pattern!r}: ours {ours} vs RabbitMQ {routed}"
