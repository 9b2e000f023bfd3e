"""The embedded broker's core: queues, the two topic exchanges (events and dead letters) and message fates.

Everything here is synchronous except waiting for a message, so a publish is a handful of dict look-ups and
deque appends: the hot path must stay close to a bare asyncio router. Consumers (in-process workers or the
socket server's pumps) pull from a ``MessageQueue``; the broker never calls user code.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from thatdam_bus.errors import PublishRefused
from thatdam_bus.topics import topic_matches
from thatdam_bus.transports.base import (
    ACK,
    Delivery,
    Fate,
    Outcome,
    QueueKind,
    QueueSpec,
    Source,
    dead_letter_headers,
    settle,
)
from thatdam_bus.transports.mailbox import Mailbox, make_delivery

log = logging.getLogger(__name__)

NO_HEADERS: Mapping[str, Any] = MappingProxyType({})
DEAD_LETTER_QUEUE = "dead-letters"
_ROUTE_CACHE_LIMIT = 8192
"""Routing keys carry node ids and intent ids, so the cache is bounded: past this size it starts over."""


class MessageQueue(Mailbox[Delivery]):
    """One broker queue. Durable queues refuse confirmed publishes when full (back-pressure); ephemeral
    views and the dead-letter store drop their oldest message instead (lossy fan-out is their contract)."""

    __slots__ = ("_warned", "drop_oldest", "dropped", "durable", "limit", "name")

    def __init__(self, name: str, *, durable: bool, limit: int, drop_oldest: bool) -> None:
        super().__init__()
        self.name = name
        self.durable = durable
        self.limit = limit
        self.drop_oldest = drop_oldest
        self.dropped = 0
        self._warned = False

    def __repr__(self) -> str:
        return f"<MessageQueue {self.name!r} depth={len(self)} dropped={self.dropped}>"

    @property
    def full(self) -> bool:
        return len(self._items) >= self.limit

    def offer(self, delivery: Delivery) -> None:
        """Enqueue a routed copy; a full queue loses one message (oldest or this one) and says so once."""
        if len(self._items) >= self.limit:
            self.dropped += 1
            if not self._warned:
                self._warned = True
                victim = "oldest messages" if self.drop_oldest else "new messages"
                log.warning("queue %s is full (%d); dropping %s from now on", self.name, self.limit, victim)
            if not self.drop_oldest:
                return
            self._items.popleft()
        self._items.append(delivery)
        if self._waiters and not self._waking:
            self._wake()


class Broker:
    """Queues, bindings on the events and dead-letter exchanges, a route cache, and the three fates."""

    def __init__(self, prefix: str, *, max_attempts: int, queue_limit: int) -> None:
        if max_attempts < 1 or queue_limit < 1:
            raise ValueError("max_attempts and queue_limit must be >= 1")
        self.prefix = prefix
        self.max_attempts = max_attempts
        self.queue_limit = queue_limit
        self.high_water = max(1, queue_limit // 2)
        """Depth past which a queue (all share the broker's limit) is filling: a socket publisher is held back
        until its target queues are under it again."""
        self.queues: dict[str, MessageQueue] = {}
        self._bindings: dict[Source, dict[tuple[str, str], MessageQueue]] = {s: {} for s in Source}
        self._routes: dict[Source, dict[str, tuple[MessageQueue, ...]]] = {s: {} for s in Source}
        self._event_routes = self._routes[Source.EVENTS]
        self._ephemeral_ids = itertools.count(1)
        dead = self._queue(self.durable_name(DEAD_LETTER_QUEUE), durable=True, drop_oldest=True)
        self.bind(dead, Source.DEAD_LETTERS, ("#",))

    def durable_name(self, name: str) -> str:
        return f"{self.prefix}.{name}"

    def declare(self, spec: QueueSpec) -> MessageQueue:
        """Find or create the spec's queue and add its bindings (bindings accumulate, as in RabbitMQ)."""
        if spec.kind is QueueKind.DURABLE:
            assert spec.name is not None
            name = self.durable_name(spec.name)
            found = self.queues.get(name)
            queue = found if found is not None else self._queue(name, durable=True, drop_oldest=False)
        else:
            name = f"{self.prefix}.ephemeral.{next(self._ephemeral_ids)}"
            queue = self._queue(name, durable=False, drop_oldest=True)
        self.bind(queue, spec.source, spec.patterns)
        return queue

    def bind(self, queue: MessageQueue, source: Source, patterns: tuple[str, ...]) -> None:
        bindings = self._bindings[source]
        for pattern in patterns:
            bindings[(pattern, queue.name)] = queue
        self._routes[source].clear()

    def delete(self, queue: MessageQueue) -> None:
        """Remove a queue and its bindings; its messages go with it (an ephemeral view that was cancelled)."""
        if self.queues.get(queue.name) is not queue:
            return
        del self.queues[queue.name]
        for source, bindings in self._bindings.items():
            for key in [k for k, q in bindings.items() if q is queue]:
                del bindings[key]
            self._routes[source].clear()
        queue.drain()

    def route(self, source: Source, routing_key: str) -> tuple[MessageQueue, ...]:
        """The queues a routing key reaches, each once, in binding order; cached until bindings change."""
        cache = self._routes[source]
        queues = cache.get(routing_key)
        if queues is None:
            found = {q.name: q for (pattern, _), q in self._bindings[source].items()
                     if topic_matches(pattern, routing_key)}
            queues = tuple(found.values())
            if len(cache) >= _ROUTE_CACHE_LIMIT:
                cache.clear()
            cache[routing_key] = queues
        return queues

    def publish(self, routing_key: str, body: bytes, headers: Mapping[str, Any] | None,
                durable: bool, mandatory: bool) -> int:
        """Route one message to the events exchange. Returns the depth of the fullest target queue, so the
        caller can let consumers catch up: the in-process transport yields past a burst's worth, the socket
        server stops reading a publisher past the high-water mark, before anything has to be dropped."""
        queues = self._event_routes.get(routing_key)
        if queues is None:
            queues = self.route(Source.EVENTS, routing_key)
        if not queues:
            if mandatory:
                raise PublishRefused(f"no queue is bound to routing key {routing_key!r}")
            return 0
        if durable:
            self._check_room(queues)
        frozen = NO_HEADERS if not headers else MappingProxyType(dict(headers))
        shared: dict[Any, Any] | None = {} if len(queues) > 1 else None
        deepest = 0
        for queue in queues:
            queue.offer(make_delivery(routing_key, body, frozen, 1, queue.name, shared))
            depth = len(queue)
            if depth > deepest:
                deepest = depth
        return deepest

    def finish(self, queue: MessageQueue, delivery: Delivery, outcome: Outcome) -> None:
        """Apply a subscriber's decision, bounded by ``settle`` so a poison message ends as a dead letter."""
        if outcome is ACK:
            return
        if not isinstance(outcome, Outcome):
            outcome = Outcome(Fate.REQUEUE, f"subscriber returned {outcome!r}, not an Outcome")
        outcome = settle(outcome, delivery.attempt, self.max_attempts)
        if outcome.fate is Fate.ACK:
            return
        if outcome.fate is Fate.REQUEUE:
            self.release(queue, delivery)
        else:
            self.dead_letter(delivery, outcome.reason or "rejected")
            outcome.parked()

    def release(self, queue: MessageQueue, delivery: Delivery, *, redelivered: bool = True) -> None:
        """Give an unacked message back to the head of its queue. ``redelivered`` (a requeue, a callback
        interrupted, a client gone mid-work) counts an attempt; a message no callback saw does not. Never
        refused: the queue had already accepted it. A deleted queue's messages just vanish."""
        if self.queues.get(queue.name) is queue:
            attempt = delivery.attempt + 1 if redelivered else delivery.attempt
            queue.put_front(make_delivery(delivery.routing_key, delivery.body, delivery.headers, attempt,
                                          delivery.queue, delivery.shared))

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Publish a record to the dead-letter exchange under the original routing key."""
        headers = MappingProxyType(dead_letter_headers(delivery, reason))
        for queue in self.route(Source.DEAD_LETTERS, delivery.routing_key):
            queue.offer(make_delivery(delivery.routing_key, delivery.body, headers, 1, queue.name))

    def clear(self) -> None:
        for queue in self.queues.values():
            queue.drain()
        self.queues.clear()
        for source in Source:
            self._bindings[source].clear()
            self._routes[source].clear()

    def _queue(self, name: str, *, durable: bool, drop_oldest: bool) -> MessageQueue:
        queue = MessageQueue(name, durable=durable, limit=self.queue_limit, drop_oldest=drop_oldest)
        self.queues[name] = queue
        return queue

    @staticmethod
    def _check_room(queues: tuple[MessageQueue, ...]) -> None:
        """A confirmed publish is all or nothing: refuse it before any copy lands if a work queue is full."""
        for queue in queues:
            if queue.durable and not queue.drop_oldest and queue.full:
                raise PublishRefused(f"queue {queue.name} is full ({queue.limit} messages)")
