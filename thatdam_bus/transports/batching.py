"""Batching for high-rate channels: several events in one broker message, unpacked again before any callback.

A busy channel (frame pointers from many cameras, telemetry) pays the broker's per-message cost (frames,
routing, a delivery, an ack) once per event. With a ``BatchPolicy`` the AMQP transport buffers the events
whose routing key matches one of the policy's patterns and publishes them together, per routing key, when
``max_events`` or ``max_bytes`` is reached or ``linger`` seconds after the first one, whichever comes first
(``linger=0``: at the end of the loop iteration that opened it).
The consumer side unpacks a batch into one ``Delivery`` per event, in order, so handlers and dispatch are
unchanged, and every event gets its own fate: a dead-lettered or retried event is republished alone, its
neighbours are acked as usual.

On the wire a batch is one message with the header ``BATCH_HEADER`` (the event count) whose body is, per
event, ``>II`` (headers length, body length), the event's headers as an orjson object (empty when it has
none) and its body; the same framing as the local socket's.

Guarantees: events of one routing key leave in publish order (batches are sent in the order they close).
A durable batched publish returns once the broker confirmed the batch that holds it (so a lone durable
event waits up to ``linger``); a transient one returns once it is buffered, or, when it fills its batch,
once that batch is written. A transient batch that cannot be written is lost, like any transient event
published while the broker is away, and logged; mandatory publishes are never batched.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from thatdam_bus.topics import topic_matches
from thatdam_bus.transports.base import Delivery

log = logging.getLogger(__name__)

BATCH_HEADER = "x-thatdam-batch"
BATCH_CONTENT_TYPE = "application/vnd.thatdam.batch"
_RECORD = struct.Struct(">II")
_ROUTE_CACHE_LIMIT = 4096

SendBatch = Callable[[str, bytes, dict[str, Any], bool], Awaitable[None]]
"""``(routing_key, body, headers, durable)``: how the transport publishes one batch message."""


class BatchFormatError(ValueError):
    """A message marked as a batch whose body is not a valid batch."""


@dataclass(frozen=True)
class BatchPolicy:
    """Which routing keys are batched and when a batch closes. Opt-in, per transport."""

    patterns: tuple[str, ...]
    max_events: int = 128
    max_bytes: int = 128 * 1024
    linger: float = 0.002
    """Seconds a batch waits for more events after its first one. ``0``: until the publishing task yields to
    the event loop, so a batch is what the process published in one loop iteration (no added latency; a
    producer that waits between events gets batches of one)."""

    def __post_init__(self) -> None:
        if not self.patterns:
            raise ValueError("a batch policy needs at least one routing-key pattern")
        if self.max_events < 1 or self.max_bytes < 1 or not 0 <= self.linger <= 1:
            raise ValueError("max_events and max_bytes must be >= 1, linger between 0 and 1 s")


def encode_record(body: bytes, headers: Mapping[str, Any] | None) -> bytes:
    head = orjson.dumps(dict(headers)) if headers else b""
    return b"".join((_RECORD.pack(len(head), len(body)), head, body))


def iter_records(body: bytes) -> Iterator[tuple[dict[str, Any], bytes]]:
    """Each event of a batch body as ``(headers, body)``; ``BatchFormatError`` on a malformed body."""
    view, pos, size = memoryview(body), 0, len(body)
    while pos < size:
        if size - pos < _RECORD.size:
            raise BatchFormatError("truncated batch record header")
        head_len, body_len = _RECORD.unpack_from(body, pos)
        start = pos + _RECORD.size
        end = start + head_len + body_len
        if end > size:
            raise BatchFormatError("batch record runs past the end of the message")
        try:
            headers = orjson.loads(view[start:start + head_len]) if head_len else {}
        except orjson.JSONDecodeError as exc:
            raise BatchFormatError(f"batch record headers are not JSON: {exc}") from exc
        if not isinstance(headers, dict):
            raise BatchFormatError("batch record headers are not an object")
        yield headers, body[start + head_len:end]
        pos = end


def unpack(outer: Delivery) -> list[Delivery]:
    """The events of a batch delivery, in order, each with the batch's routing key, attempt and queue."""
    return [Delivery(outer.routing_key, body, headers, outer.attempt, outer.queue)
            for headers, body in iter_records(outer.body)]


@dataclass(eq=False)
class _Open:
    """A batch being filled for one routing key."""

    durable: bool
    sent: asyncio.Future[None]
    """Resolved once the batch is written (transient) or confirmed (durable); what its publishers await."""
    records: list[bytes] = field(default_factory=list)
    size: int = 0
    timer: asyncio.TimerHandle | None = None


class Batcher:
    """Buffers batched publishes per routing key and sends each closed batch through ``send``.

    Every closed batch is sent by its own task, created the moment it closes: tasks start in creation order,
    so batches of one key reach the channel in the order they closed. The tasks are owned here; ``aclose``
    sends what is still open and waits for them.
    """

    def __init__(self, policy: BatchPolicy, send: SendBatch) -> None:
        self.policy = policy
        self._send = send
        self._open: dict[str, _Open] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._matches: dict[str, bool] = {}
        self.batches_sent = 0
        self.events_sent = 0

    def wants(self, routing_key: str) -> bool:
        """Whether ``routing_key`` is batched (cached: a handful of keys carry most traffic)."""
        wanted = self._matches.get(routing_key)
        if wanted is None:
            wanted = any(topic_matches(pattern, routing_key) for pattern in self.policy.patterns)
            if len(self._matches) >= _ROUTE_CACHE_LIMIT:
                self._matches.clear()
            self._matches[routing_key] = wanted
        return wanted

    async def publish(self, routing_key: str, body: bytes, headers: Mapping[str, Any] | None,
                      durable: bool) -> None:
        batch = self._open.get(routing_key)
        if batch is not None and batch.durable != durable:
            self._close(routing_key)  # keep publish order across a change of durability
            batch = None
        if batch is None:
            batch = self._start(routing_key, durable)
        record = encode_record(body, headers)
        batch.records.append(record)
        batch.size += len(record)
        full = len(batch.records) >= self.policy.max_events or batch.size >= self.policy.max_bytes
        if full:
            self._close(routing_key)
        if full or durable:
            await asyncio.shield(batch.sent)

    def _start(self, routing_key: str, durable: bool) -> _Open:
        loop = asyncio.get_running_loop()
        batch = _Open(durable, loop.create_future())
        if self.policy.linger:
            batch.timer = loop.call_later(self.policy.linger, self._expire, routing_key, batch)
        else:
            loop.call_soon(self._expire, routing_key, batch)
        self._open[routing_key] = batch
        return batch

    def _expire(self, routing_key: str, batch: _Open) -> None:
        if self._open.get(routing_key) is batch:
            self._close(routing_key)

    def _close(self, routing_key: str) -> None:
        batch = self._open.pop(routing_key)
        if batch.timer is not None:
            batch.timer.cancel()
        task = asyncio.get_running_loop().create_task(self._flush(routing_key, batch),
                                                      name=f"thatdam-batch {routing_key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self, routing_key: str, batch: _Open) -> None:
        count = len(batch.records)
        try:
            await self._send(routing_key, b"".join(batch.records), {BATCH_HEADER: count}, batch.durable)
        except Exception as exc:
            if not batch.sent.done():
                batch.sent.set_exception(exc)
            if not batch.durable:
                log.warning("lost a batch of %d transient events for %r: %s", count, routing_key, exc)
            batch.sent.exception()  # retrieved: a transient batch's failure has no one waiting on it
            return
        self.batches_sent += 1
        self.events_sent += count
        if not batch.sent.done():
            batch.sent.set_result(None)

    async def flush(self) -> None:
        """Send every open batch now and wait until every batch sent so far has settled."""
        for routing_key in list(self._open):
            self._close(routing_key)
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    async def aclose(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self.flush()
        except TimeoutError:
            log.warning("%d batch(es) not sent within %.1fs of closing; cancelled", len(self._tasks), timeout)
            for task in list(self._tasks):
                task.cancel()
