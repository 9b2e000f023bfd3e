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
import functools
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from aiormq.exceptions import AMQPError, ChannelInvalidStateError, ChannelNotFoundEntity, ChannelPreconditionFailed
from yarl import URL

from thatdam_bus.errors import TransportError
from thatdam_bus.recorder.durations import rabbitmq_age
from thatdam_bus.recorder.ring_format import Entry
from thatdam_bus.topics import Patterns
from thatdam_bus.transports.batching import BATCH_HEADER, BatchFormatError, iter_records

log = logging.getLogger("thatdam_bus.recorder")
SEAM_HEADER = "x-thatdam-seam"
OFFSET_HEADER = "x-stream-offset"
PREFETCH = 512
RESUME_ATTEMPTS = 3
"""How many times in a row a dropped reader is attached again before bus-tail gives up."""
RESUME_BACKOFF_S = 0.2
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


class ReaderLost(TransportError):
    """The broker kept dropping a stream reader: more than ``RESUME_ATTEMPTS`` times without a message between."""


class StreamSource:
    """Reads ``<prefix>.recorder`` for bus-tail: offsets are the stream's own.

    RabbitMQ 3.10's stream readers crash when they attach while retention deletes the segment they look in (a
    timestamp start), or sit at a segment's end as it rolls over (``unexpected_chunk_id``); the broker then
    closes the reader's connection (``INTERNAL_ERROR``). So a reader that is dropped is attached again after the
    last offset it delivered, on a new connection when needed: no duplicate and, unless retention deleted
    them meanwhile, no gap. (Offsets alone cannot tell such a loss: a stream's offsets are not contiguous for a
    reader, each segment starts with a tracking chunk that takes one.)"""

    exact_since = False
    """A timestamp attaches at the first chunk stored within its whole second: ``replay`` skips leading older
    envelopes."""

    def __init__(self, url: str, prefix: str, *, timeout: float = 10.0) -> None:
        self.url = str(URL(url).update_query(name=f"thatdam-bus recorder reader {prefix}"))
        self.name = stream_name(prefix)
        self.timeout = timeout
        self._connection: AbstractConnection | None = None
        self._seam: int | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, url: str, prefix: str, timeout: float = 10.0) -> AsyncIterator[StreamSource | None]:
        """The source, or None when no leader has declared the stream on this broker."""
        source = cls(url, prefix, timeout=timeout)
        try:
            yield source if await source.exists() else None
        finally:
            await source._drop_connection()

    async def exists(self) -> bool:
        channel = await self._channel()
        try:
            await channel.declare_queue(self.name, passive=True)
        except ChannelNotFoundEntity:
            return False
        await channel.close()
        return True

    async def end(self) -> int:
        """The seam: the offset of a marker this reader appends now; everything before it is history.

        The reader attaches at the stream's last chunk *before* the marker is appended, so the marker is ahead
        of it whatever the clocks say; each time it is attached again the marker is appended again (the first
        one may then be behind it), and the first one seen is the seam."""
        if self._seam is None:
            mark = uuid.uuid4().hex
            consumer = self._consume("last", marks=True, on_attached=functools.partial(self._append_mark, mark))
            async with contextlib.aclosing(consumer) as entries:
                async for entry in entries:
                    if entry.headers.get(SEAM_HEADER) == mark:
                        self._seam = entry.offset
                        break
        assert self._seam is not None, "a stream consumer ended"  # _consume only ends when closed
        return self._seam

    async def _append_mark(self, mark: str) -> None:
        channel = await self._channel(publisher_confirms=True)
        await channel.default_exchange.publish(aio_pika.Message(b"", headers={SEAM_HEADER: mark}), self.name)
        await channel.close()

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

    async def _consume(self, start: OffsetSpec, *, marks: bool = False,
                       on_attached: Callable[[], Awaitable[None]] | None = None) -> AsyncGenerator[Entry, None]:
        """Consume from ``start`` until the caller stops, attaching again after the last offset delivered when the
        broker drops the reader; seam markers are skipped unless ``marks``."""
        position, drops = start, 0
        while True:
            try:
                async with contextlib.aclosing(self._attach(position, on_attached)) as messages:
                    async for message in messages:
                        drops = 0
                        offset = _offset_of(message)
                        position = offset + 1
                        if marks or SEAM_HEADER not in message.headers:
                            for entry in _entries(message, offset):
                                yield entry
            except _ReaderDropped as exc:
                drops += 1
                if drops > RESUME_ATTEMPTS:
                    raise ReaderLost(f"the broker dropped the reader of {self.name} {drops} times in a row: "
                                     f"{exc.__cause__}") from exc
                log.warning("the broker dropped the reader of %s (%s); attaching again at %s",
                            self.name, exc.__cause__, position)
                await self._drop_connection()
                await asyncio.sleep(RESUME_BACKOFF_S * drops)  # a broker that is restarting gets a moment

    async def _attach(self, start: OffsetSpec, on_attached: Callable[[], Awaitable[None]] | None,
                      ) -> AsyncGenerator[AbstractIncomingMessage, None]:
        """One consumer of the stream from ``start``, messages acked as they are taken (the prefetch bounds what
        waits here); raises ``_ReaderDropped`` when the broker closes its connection or cannot be reached, and
        ``TransportError`` when it cancels the consumer or closes the channel for a reason a retry would meet
        again."""
        inbox: asyncio.Queue[AbstractIncomingMessage | BaseException] = asyncio.Queue()
        channel: AbstractChannel | None = None
        try:
            channel = await self._channel()

            def closed(_: object, exc: BaseException | None) -> None:  # a cancelled close comes as CancelledError
                inbox.put_nowait(exc if isinstance(exc, Exception) else ConnectionError(f"channel closed: {exc!r}"))

            def cancelled(_: object) -> None:  # one consumer on this channel
                inbox.put_nowait(TransportError(f"the broker cancelled the reader of {self.name} (deleted?)"))

            channel.close_callbacks.add(closed)
            (await channel.get_underlay_channel()).on_consumer_cancel_callbacks.add(cancelled)
            await channel.set_qos(prefetch_count=PREFETCH)
            queue = await channel.declare_queue(self.name, passive=True)
            await queue.consume(inbox.put, arguments={OFFSET_HEADER: start})
            if on_attached is not None:
                await on_attached()
            while True:
                message = await inbox.get()
                if isinstance(message, BaseException):
                    raise message
                await message.ack()
                yield message
        except TransportError:
            raise
        except (ConnectionError, TimeoutError, ChannelInvalidStateError) as exc:
            raise _ReaderDropped() from exc
        except AMQPError as exc:  # a channel error: the stream is gone, or the reader may not read it
            raise TransportError(f"the broker refused the reader of {self.name}: {exc}") from exc
        finally:
            if channel is not None:
                with contextlib.suppress(Exception):
                    await channel.close()

    async def _channel(self, *, publisher_confirms: bool = False) -> AbstractChannel:
        """A channel on the connection, which is opened first when there is none (or it is known closed)."""
        if self._connection is None or self._connection.is_closed:
            async with asyncio.timeout(self.timeout):
                self._connection = await aio_pika.connect(self.url)
        try:
            return await self._connection.channel(publisher_confirms=publisher_confirms)
        except RuntimeError as exc:  # aiormq knows the connection closed before aio-pika's is_closed says so
            raise ConnectionError(f"the connection is closed: {exc}") from exc

    async def _drop_connection(self) -> None:
        """Forget the connection after a reader was dropped: the broker closes it when a stream reader crashes,
        and aio-pika may not say so yet (a channel opened on it then fails), so the next reader opens its own."""
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()


class _ReaderDropped(Exception):
    """The broker closed a reader's channel or connection (the cause says why)."""


def _offset_of(message: AbstractIncomingMessage) -> int:
    offset = message.headers.get(OFFSET_HEADER)
    if not isinstance(offset, int):  # RabbitMQ sets it on every message a stream consumer gets
        raise TransportError(f"a stream message without an integer {OFFSET_HEADER} header: {offset!r}")
    return offset


def _entries(message: AbstractIncomingMessage, offset: int) -> list[Entry]:
    """The events of one stream message: itself, or each event of a batch (``transports.batching``: high-rate
    channels put several events in one message), all at the message's offset, so a seam between offsets
    never splits a batch. A batch that cannot be unpacked is shown as it is, for the reader to report."""
    key = message.routing_key or ""
    if BATCH_HEADER in message.headers:
        with contextlib.suppress(BatchFormatError):
            return [Entry(offset, 0.0, key, headers, body) for headers, body in iter_records(message.body)]
    return [Entry(offset, 0.0, key, message.headers, message.body)]
