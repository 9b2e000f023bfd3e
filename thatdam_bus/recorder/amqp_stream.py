"""The RabbitMQ flight recorder: a stream queue ``<prefix>.recorder`` bound to every recorded channel.

The leader declares it (``declare_recorder_stream``, idempotent, at every start of a term) with
``x-max-age`` (``THATDAM_RECORDER_MAX_AGE``) and a size bound derived from ``THATDAM_RECORDER_MAX_BYTES`` and
``THATDAM_RECORDER_SEGMENT_BYTES`` so that the stream's files never pass the configured bytes (``stream_arguments``
says how). A stream that exists with other arguments is kept as it is (RabbitMQ refuses a redeclaration with
different ones; change retention with a policy instead).

Readers (bus-tail) never declare it: a read-only tool should not create a durable, size-owning queue whose
retention it does not know, and a stream created by a reader holds no history anyway. ``StreamSource``
consumes it over AMQP 0.9.1 (``x-stream-offset`` plus a prefetch, acking as it goes), from an offset, a
timestamp or the start, and keeps consuming live: one ordered log, so no gap and no duplicate at the seam.

It is bound to ``Patterns.RECORDED``, every channel but the intents themselves, not to ``#``: bound to ``#``
it would make every publish routable, so a mandatory intent nobody consumes would no longer come back as
unroutable (``thatdam publish`` exit 4).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from aiormq.exceptions import ChannelNotFoundEntity, ChannelPreconditionFailed

from thatdam_bus.recorder.durations import rabbitmq_age
from thatdam_bus.recorder.ring_format import Entry
from thatdam_bus.topics import Patterns
from thatdam_bus.transports.batching import BATCH_HEADER, BatchFormatError, iter_records

log = logging.getLogger("thatdam_bus.recorder")
SEAM_HEADER = "x-thatdam-seam"
OFFSET_HEADER = "x-stream-offset"
PREFETCH = 512
FIND_SEAM_LOOKBACK_S = 60.0
FIND_SEAM_TIMEOUT_S = 5.0
OffsetSpec = int | str | datetime


def stream_name(prefix: str) -> str:
    return f"{prefix}.recorder"


def stream_arguments(*, max_age_s: float, max_bytes: int, segment_bytes: int) -> dict[str, Any]:
    """Arguments under which the stream's files (segments and indexes) stay within ``max_bytes``.

    RabbitMQ's ``x-max-length-bytes`` is not such a bound: retention deletes the oldest whole segments only
    when a segment rolls over (and asynchronously), until the segments it sees total at most that figure, while
    the active segment keeps filling, and passes its size by the chunk that crosses it. Measured on RabbitMQ
    3.10 with retention at the full budget: 1.18x the budget with 10 segments, 2x with segments smaller than a
    chunk. So the segment is at most a quarter of the budget, and retention gets the budget less two segments:
    one for the segment being written, one for the chunk that overshoots it and what lands while retention
    runs."""
    segment = max(1, min(segment_bytes, max_bytes // 4))
    return {"x-queue-type": "stream", "x-max-age": rabbitmq_age(max_age_s),
            "x-max-length-bytes": max(1, max_bytes - 2 * segment), "x-stream-max-segment-size-bytes": segment}


async def declare_recorder_stream(url: str, prefix: str, *, max_age_s: float, max_bytes: int, segment_bytes: int,
                                  timeout: float = 10.0) -> None:
    """Declare ``<prefix>.recorder`` and bind it to ``Patterns.RECORDED``; one short connection of its own."""
    name = stream_name(prefix)
    arguments = stream_arguments(max_age_s=max_age_s, max_bytes=max_bytes, segment_bytes=segment_bytes)
    async with asyncio.timeout(timeout):
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            try:
                queue = await channel.declare_queue(name, durable=True, arguments=arguments)
            except ChannelPreconditionFailed as exc:
                log.warning("recorder %s exists with other arguments; keeping it as it is: %s", name, exc)
                channel = await connection.channel()
                queue = await channel.declare_queue(name, passive=True)
            for pattern in Patterns.RECORDED:
                await queue.bind(prefix, routing_key=pattern)
    log.info("flight recorder: stream %s (max age %s, max %d bytes)", name, arguments["x-max-age"], max_bytes)


class StreamSource:
    """Reads ``<prefix>.recorder`` for bus-tail: offsets are the stream's own."""

    exact_since = False
    """A timestamp attaches at the first chunk stored within its whole second: ``replay`` skips leading older
    envelopes."""

    def __init__(self, connection: AbstractConnection, prefix: str) -> None:
        self.connection = connection
        self.name = stream_name(prefix)
        self._seam: int | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, url: str, prefix: str, timeout: float = 10.0) -> AsyncIterator[StreamSource | None]:
        """The source, or None when no leader has declared the stream on this broker."""
        async with asyncio.timeout(timeout):
            connection = await aio_pika.connect(url)
        async with connection:
            source = cls(connection, prefix)
            yield source if await source.exists() else None

    async def exists(self) -> bool:
        channel = await self.connection.channel()
        try:
            await channel.declare_queue(self.name, passive=True)
        except ChannelNotFoundEntity:
            return False
        await channel.close()
        return True

    async def end(self) -> int:
        """The seam: the offset of a marker this reader appends now; everything before it is history."""
        if self._seam is None:
            mark = uuid.uuid4().hex
            channel = await self.connection.channel(publisher_confirms=True)
            await channel.default_exchange.publish(aio_pika.Message(b"", headers={SEAM_HEADER: mark}), self.name)
            await channel.close()
            since = datetime.now(UTC) - timedelta(seconds=FIND_SEAM_LOOKBACK_S)
            try:
                async with asyncio.timeout(FIND_SEAM_TIMEOUT_S):
                    self._seam = await self._find(mark, since)
            except TimeoutError:  # our clock far ahead of the broker's: look from the start instead
                self._seam = await self._find(mark, "first")
        return self._seam

    async def _find(self, mark: str, start: OffsetSpec) -> int:
        async with contextlib.aclosing(self._consume(start, marks=True)) as entries:
            async for entry in entries:
                if entry.headers.get(SEAM_HEADER) == mark:
                    return entry.offset
        raise AssertionError("a stream consumer ended")  # _consume only ends when closed

    def first(self) -> OffsetSpec:
        return "first"

    def since(self, moment: datetime) -> OffsetSpec:
        return moment

    async def history(self, start: OffsetSpec, end: int) -> AsyncGenerator[Entry, None]:
        """Entries from ``start`` up to (not including) ``end``, which must be a seam from ``end()``."""
        async with contextlib.aclosing(self._consume(start, marks=True)) as entries:
            async for entry in entries:
                if entry.offset >= end:
                    return
                if SEAM_HEADER not in entry.headers:
                    yield entry

    def follow(self, start: OffsetSpec) -> AsyncGenerator[Entry, None]:
        return self._consume(start)

    async def _consume(self, start: OffsetSpec, *, marks: bool = False) -> AsyncGenerator[Entry, None]:
        """Consume from ``start`` until the caller stops; messages are acked as they are taken (the prefetch
        bounds what waits here), seam markers are skipped unless ``marks``."""
        channel: AbstractChannel = await self.connection.channel()
        inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        try:
            await channel.set_qos(prefetch_count=PREFETCH)
            queue = await channel.declare_queue(self.name, passive=True)
            await queue.consume(inbox.put, arguments={"x-stream-offset": start})
            while True:
                message = await inbox.get()
                await message.ack()
                if marks or SEAM_HEADER not in message.headers:
                    for entry in _entries(message):
                        yield entry
        finally:
            with contextlib.suppress(Exception):
                await channel.close()


def _entries(message: AbstractIncomingMessage) -> list[Entry]:
    """The events of one stream message: itself, or each event of a batch (``transports.batching``: high-rate
    channels put several events in one message), all at the message's offset, so a seam between offsets
    never splits a batch. A batch that cannot be unpacked is shown as it is, for the reader to report."""
    offset = message.headers.get(OFFSET_HEADER)
    at, key = int(offset) if isinstance(offset, int) else -1, message.routing_key or ""
    if BATCH_HEADER in message.headers:
        with contextlib.suppress(BatchFormatError):
            return [Entry(at, 0.0, key, headers, body) for headers, body in iter_records(message.body)]
    return [Entry(at, 0.0, key, message.headers, message.body)]
