"""A recorder reader the broker drops is attached again after the last offset it delivered.

RabbitMQ 3.10 crashes stream readers that race retention or a segment roll-over and closes their connection;
bus-tail then hung on a consumer that would never deliver again (a CI run timed out in ``end()``). Here the
broker closes the reader's connection itself (``rabbitmqctl close_connection``) in the middle of a replay:
every event must still come exactly once, in order, including those published after the drop, which only a
new reader can see. A broker that stays out of reach ends the replay with ``ReaderLost``, and a stream deleted
under the reader with a ``TransportError``, not a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import subprocess
from collections.abc import AsyncIterator

import aio_pika
import orjson
import pytest

from tests.conftest import ON_CI, delete_amqp_prefix
from thatdam_bus.errors import TransportError
from thatdam_bus.recorder.amqp_stream import (
    RESUME_ATTEMPTS,
    ReaderLost,
    StreamSource,
    declare_recorder_stream,
    stream_name,
)
from thatdam_bus.transports.amqp import AmqpTransport

BEFORE_DROP = 200
AFTER_DROP = 100


def close_reader_connections(prefix: str) -> int:
    """Close, on the broker, every connection of this prefix's recorder readers; how many were closed."""
    listed = subprocess.run(["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
                            capture_output=True, text=True, check=True, timeout=30).stdout
    name = f"thatdam-bus recorder reader {prefix}"
    pids = [re.match(r"\s*(<[^>]+>)", line).group(1)  # type: ignore[union-attr]
            for line in listed.splitlines() if name in line]
    for pid in pids:
        subprocess.run(["rabbitmqctl", "-q", "close_connection", pid, "test: drop the recorder reader"],
                       capture_output=True, check=True, timeout=30)
    return len(pids)


def seq_of(body: bytes) -> int:
    return int(orjson.loads(body)["seq"])


@pytest.fixture
async def stream(rabbitmq: str, prefix: str) -> AsyncIterator[AmqpTransport]:
    """The prefix's transport, its recorder stream declared; both gone at teardown."""
    if shutil.which("rabbitmqctl") is None:
        if ON_CI:
            pytest.fail("rabbitmqctl not found (CI=true): cannot close a connection on the broker")
        pytest.skip("rabbitmqctl not found: cannot close a connection on the broker")
    transport = AmqpTransport(rabbitmq, prefix=prefix)
    await transport.start()
    await declare_recorder_stream(rabbitmq, prefix, max_age_s=3600, max_bytes=50_000_000, segment_bytes=1_000_000)
    try:
        yield transport
    finally:
        await transport.aclose()
        await delete_amqp_prefix(rabbitmq, prefix, [stream_name(prefix)])


async def publish(transport: AmqpTransport, seqs: range) -> None:
    for seq in seqs:
        await transport.publish("capture.obs.seq", f'{{"seq": {seq}}}'.encode(), durable=False)


@pytest.mark.parametrize("drop_at", [50, BEFORE_DROP], ids=["mid-backlog", "waiting-live"])
async def test_a_dropped_reader_resumes_after_its_last_offset(rabbitmq: str, prefix: str, stream: AmqpTransport,
                                                              caplog: pytest.LogCaptureFixture,
                                                              drop_at: int) -> None:
    """Dropped with delivered messages not yet taken (their acks fail), or idle at the live end (only the
    channel's close says so)."""
    await publish(stream, range(BEFORE_DROP))
    total = BEFORE_DROP + AFTER_DROP
    seen: list[int] = []
    async with StreamSource.open(rabbitmq, prefix) as source:
        assert source is not None
        async with asyncio.timeout(30), contextlib.aclosing(source.follow("first")) as entries:
            async for entry in entries:
                seen.append(seq_of(entry.body))
                if len(seen) == drop_at:
                    with caplog.at_level(logging.WARNING, logger="thatdam_bus.recorder"):
                        assert await asyncio.to_thread(close_reader_connections, prefix) == 1
                    await publish(stream, range(BEFORE_DROP, total))
                if seen[-1] == total - 1:
                    break
    assert seen == list(range(total)), "every event once, in order, across the drop"
    assert any("dropped the reader" in record.getMessage() for record in caplog.records), \
        "the reader was attached again, not left on the closed connection"


async def test_the_seam_is_found_after_the_reader_is_dropped(rabbitmq: str, prefix: str,
                                                             stream: AmqpTransport) -> None:
    """``end()`` attaches before it appends its marker: a drop then appends it again, and history up to the
    seam is still whole."""
    await publish(stream, range(BEFORE_DROP))
    async with StreamSource.open(rabbitmq, prefix) as source:
        assert source is not None
        first_seam = await source.end()
        assert await asyncio.to_thread(close_reader_connections, prefix) == 1
        await publish(stream, range(BEFORE_DROP, BEFORE_DROP + AFTER_DROP))
        async with asyncio.timeout(30), contextlib.aclosing(source.history("first", first_seam)) as entries:
            history = [seq_of(entry.body) async for entry in entries]
    assert history == list(range(BEFORE_DROP))


async def test_a_broker_out_of_reach_ends_the_reader_with_reader_lost(rabbitmq: str, prefix: str,
                                                                      stream: AmqpTransport) -> None:
    await publish(stream, range(10))
    async with StreamSource.open(rabbitmq, prefix, timeout=2.0) as source:
        assert source is not None
        source.url = "amqp://guest:guest@127.0.0.1:1/"  # where the next connection goes: nothing listens
        with pytest.raises(ReaderLost, match=f"{RESUME_ATTEMPTS + 1} times"):
            async with asyncio.timeout(30), contextlib.aclosing(source.follow("first")) as entries:
                async for entry in entries:
                    if seq_of(entry.body) == 0:
                        assert await asyncio.to_thread(close_reader_connections, prefix) == 1


async def test_a_stream_deleted_under_the_reader_ends_it_with_a_transport_error(rabbitmq: str, prefix: str,
                                                                                stream: AmqpTransport) -> None:
    """The broker cancels the consumer: not a drop to retry, and not a wait that never ends."""
    await publish(stream, range(10))
    async with StreamSource.open(rabbitmq, prefix) as source:
        assert source is not None
        with pytest.raises(TransportError, match="cancelled the reader") as raised:
            async with asyncio.timeout(30), contextlib.aclosing(source.follow("first")) as entries:
                async for entry in entries:
                    if seq_of(entry.body) == 9:
                        connection = await aio_pika.connect(rabbitmq)
                        async with connection:
                            await (await connection.channel()).queue_delete(stream_name(prefix))
    assert not isinstance(raised.value, ReaderLost)
