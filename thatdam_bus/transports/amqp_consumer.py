"""One subscription on RabbitMQ: its own channel, queue and consumer, and the fate of every delivery.

Consumption uses aio-pika directly (on a channel of the FastStream broker's connection) rather than a
FastStream subscriber, for three reasons found in faststream 0.7.8:

* a FastStream subscriber binds one routing key and declares through a declarer that caches by queue
  description, ignoring the channel (see ``amqp_topology``); a spec has many patterns and its own prefetch;
* its per-message pipeline (middlewares, parser/decoder, fast-depends, log context, ack policy) costs far more
  than the bytes-in/outcome-out contract needs, against a 0.85x-of-raw-aio-pika throughput target;
* subscribers are registered on one broker, but recovery here replaces the broker on every reconnect.

Messages are consumed on the aiormq channel under aio-pika's: its ``IncomingMessage`` wrapper and second task
per delivery cost more than the rest of our per-message path, and acks are coalesced (``amqp_acks``). A batch
message (``batching``) is unpacked here into one delivery per event, each with its own fate.

Retries are republished, not nacked: a classic queue only says ``redelivered``, never how often, so a requeue
republishes the message to the *same queue* through the default exchange with ``x-thatdam-attempts`` (and the
original routing key in ``x-thatdam-routing-key``), then acks the original once the copy is confirmed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, NamedTuple, cast

import aio_pika
from aio_pika.abc import AbstractRobustChannel, AbstractRobustQueue
from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp.commands import Basic

from thatdam_bus.errors import PublishRefused, TransportClosed
from thatdam_bus.transports.amqp_acks import AckWindow
from thatdam_bus.transports.amqp_link import APP_ID, LOG, Link, confirmed_publish
from thatdam_bus.transports.amqp_recovery import backoff_delay
from thatdam_bus.transports.amqp_topology import Topology, declare_subscription_queue
from thatdam_bus.transports.base import (
    ACK,
    ATTEMPTS_HEADER,
    ORIGINAL_KEY_HEADER,
    Delivery,
    DeliveryCallback,
    Fate,
    Outcome,
    QueueKind,
    QueueSpec,
    Source,
    dead_letter_headers,
    outcome_of_crash,
    settle,
)
from thatdam_bus.transports.batching import BATCH_HEADER, BatchFormatError, unpack

DELIVERY_COUNT_HEADER = "x-delivery-count"
# A dead-letter record already carries ATTEMPTS_HEADER (how often the *original* failed); a subscriber of the
# dead letters counts its own retries separately so that history does not eat its attempts.
TAP_ATTEMPTS_HEADER = "x-thatdam-tap-attempts"
REPAIR_ATTEMPTS = 5


@dataclass(frozen=True)
class ConsumerSettings:
    topology: Topology
    max_attempts: int
    timeout: float


def _copy(message: DeliveredMessage, body: bytes, headers: dict[str, Any], persistent: bool) -> aio_pika.Message:
    """A republishable copy keeping the properties a consumer may rely on (ids, type, timestamps). ``body``
    is the message's own, or one event's of a batch."""
    props = message.header.properties
    return aio_pika.Message(
        body,
        headers=headers,
        content_type=props.content_type,
        content_encoding=props.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT if persistent else (props.delivery_mode or 1),
        priority=props.priority,
        correlation_id=props.correlation_id,
        message_id=props.message_id,
        timestamp=props.timestamp,
        type=props.message_type,
        app_id=props.app_id or APP_ID,
    )


async def _close_quietly(channel: AbstractRobustChannel, timeout: float) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout):
            await channel.close()


class AmqpSubscription:
    """A live consumer of one ``QueueSpec``; re-attached to every new connection until cancelled."""

    def __init__(
        self,
        spec: QueueSpec,
        callback: DeliveryCallback,
        settings: ConsumerSettings,
        on_cancel: Callable[[AmqpSubscription], None],
    ) -> None:
        self.spec = spec
        self._callback = callback
        self._settings = settings
        self._on_cancel = on_cancel
        self._attempt_header = ATTEMPTS_HEADER if spec.source is Source.EVENTS else TAP_ATTEMPTS_HEADER
        self._durable = spec.kind is QueueKind.DURABLE
        self._name = settings.topology.queue_name(spec) if self._durable else ""
        self._lock = asyncio.Lock()
        self._link: Link | None = None
        self._channel: AbstractRobustChannel | None = None
        self._queue: AbstractRobustQueue | None = None
        self._underlay: AbstractChannel | None = None
        self._acks: AckWindow | None = None
        self._tag: str | None = None
        self._inflight: set[asyncio.Task[Any]] = set()
        self._repair: asyncio.Task[None] | None = None
        self.cancelled = False

    @property
    def queue(self) -> str:
        return self._name

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled else ("consuming" if self._tag else "detached")
        return f"AmqpSubscription(queue={self._name!r}, patterns={self.spec.patterns!r}, {state})"

    async def attach(self, link: Link) -> None:
        """Declare, bind and consume on ``link``; a no-op if already consuming there. The caller sets the
        deadline. The previous channel is not touched: after a reconnect it died with its connection, and
        ``_reconsume`` closes it itself once the new consumer is up."""
        async with self._lock:
            if self.cancelled or self._link is link:
                return
            self._link = self._channel = self._queue = self._tag = self._underlay = self._acks = None
            channel: AbstractRobustChannel = await link.connection.channel(publisher_confirms=False)
            try:
                await channel.set_qos(prefetch_count=self.spec.prefetch)
                name = self._name if self._durable else self._settings.topology.queue_name(self.spec)
                queue = await declare_subscription_queue(channel, self._settings.topology, self.spec, name)
                underlay = await channel.get_underlay_channel()
                acks = AckWindow(underlay)
                ok = await underlay.basic_consume(name, partial(self._on_message, link, name, acks))
                tag = str(ok.consumer_tag)
                await self._watch_consumer(link, channel, tag)
                if self.cancelled:  # abandoned while attaching (it takes no lock): this consumer must not live
                    raise TransportClosed(f"subscription to {name} was abandoned while it attached")
            except BaseException:
                await _close_quietly(channel, self._settings.timeout)
                raise
            self._link, self._channel, self._queue, self._tag, self._name = link, channel, queue, tag, name
            self._underlay, self._acks = underlay, acks

    async def _watch_consumer(self, link: Link, channel: AbstractRobustChannel, tag: str) -> None:
        """Notice the broker dropping our consumer while the connection lives (queue deleted, channel error):
        connection recovery never sees that, and the queue would sit with zero consumers."""

        def on_close(_channel: object, exc: BaseException | None = None) -> None:
            if channel is self._channel:
                self._consumer_lost(link)

        def on_cancel(frame: Any) -> None:
            if frame.consumer_tag == tag and tag == self._tag:
                self._consumer_lost(link)

        channel.close_callbacks.add(on_close)
        underlay = await channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(on_cancel)

    def _consumer_lost(self, link: Link) -> None:
        if self.cancelled or link.lost.is_set() or self._link is not link:
            return
        self._link = None  # so that attach(link) consumes again
        if self._repair is None or self._repair.done():
            self._repair = asyncio.create_task(self._reconsume(link), name=f"thatdam-reconsume {self._name}")

    async def _reconsume(self, link: Link) -> None:
        """Re-consume on the same connection, a few times with backoff; a lost connection is left to the
        supervisor (a channel closes just before its connection reports the loss, hence the first pause)."""
        stale = self._channel
        for attempt in range(REPAIR_ATTEMPTS):
            await asyncio.sleep(backoff_delay(attempt + 2, self._settings.timeout))
            if self.cancelled or link.lost.is_set():
                return
            LOG.warning("the broker dropped the consumer of %s; consuming again", self._name)
            try:
                async with asyncio.timeout(self._settings.timeout):
                    await self.attach(link)
            except Exception as exc:
                LOG.warning("re-consuming %s failed: %s: %s", self._name, type(exc).__name__, exc)
                continue
            if stale is not None:
                await _close_quietly(stale, self._settings.timeout)
            return
        LOG.error("QUEUE %s HAS NO CONSUMER from this node until the next reconnect", self._name)

    def _stop_repairs(self) -> bool:
        """Mark the subscription cancelled (deliveries from now on are ignored, nothing re-consumes it) and
        leave the transport's set; False if it already was."""
        if self.cancelled:
            return False
        self.cancelled = True
        self._on_cancel(self)
        if self._repair is not None:
            self._repair.cancel()
        return True

    def abandon(self) -> None:
        """Forget the consumer without a word to the broker, which is out of reach: in-flight callbacks are
        cancelled (their acks could not be delivered) and the broker redelivers their messages elsewhere once
        it notices the connection is gone. The channel dies with the connection."""
        if not self._stop_repairs():
            return
        for task in self._inflight - {asyncio.current_task()}:
            task.cancel()
        self._link = self._channel = self._queue = self._tag = self._underlay = self._acks = None

    async def cancel(self) -> None:
        """Stop deliveries, let in-flight callbacks settle (bounded), then close the channel."""
        if not self._stop_repairs():
            return
        timeout = self._settings.timeout
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                # An attach in flight finishes first, so that its consumer is cancelled too.
                await self._lock.acquire()
                self._lock.release()
        underlay, tag, channel, acks = self._underlay, self._tag, self._channel, self._acks
        self._link = self._channel = self._queue = self._tag = self._underlay = self._acks = None
        if underlay is not None and tag is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(timeout):
                    await underlay.basic_cancel(tag)
        await self._drain(timeout)
        if acks is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await acks.aclose()
        if channel is not None:
            await _close_quietly(channel, timeout)

    async def _drain(self, timeout: float) -> None:
        pending = self._inflight - {asyncio.current_task()}
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout)
            for task in late:
                task.cancel()

    async def _on_message(self, link: Link, queue: str, acks: AckWindow, message: DeliveredMessage) -> None:
        """The per-message path: kept free of logging, validation and allocations beyond the Delivery."""
        if self.cancelled:  # abandoned: its connection is being retired, and the broker will redeliver this
            return
        tag = cast(Basic.Deliver, message.delivery).delivery_tag or 0
        acks.delivered(tag)
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            delivery = self._delivery(message, queue)
            if BATCH_HEADER in delivery.headers:
                await self._on_batch(link, acks, tag, message, delivery)
                return
            outcome = await self._outcome(delivery)
            if outcome is ACK:
                acks.ack(tag)
                return
            await self._finish(link, acks, tag, message, delivery, outcome)
        finally:
            self._inflight.discard(task)

    async def _outcome(self, delivery: Delivery) -> Outcome:
        try:
            outcome = await self._callback(delivery)
        except Exception as exc:
            outcome = outcome_of_crash(exc)
        if outcome is ACK:
            return outcome
        return settle(outcome, delivery.attempt, self._settings.max_attempts)

    def _delivery(self, message: DeliveredMessage, queue: str) -> Delivery:
        """``attempt`` = our republish count + broker redeliveries (quorum ``x-delivery-count``, else 1 if
        the classic ``redelivered`` flag is set) + 1. A republished copy shows its original routing key."""
        frame = cast(Basic.Deliver, message.delivery)
        headers = message.header.properties.headers or {}
        count = headers.get(DELIVERY_COUNT_HEADER)
        redeliveries = count if isinstance(count, int) else int(bool(frame.redelivered))
        prior = headers.get(self._attempt_header)
        if not isinstance(prior, int):
            return Delivery(frame.routing_key or "", message.body, headers, redeliveries + 1, queue)
        key = headers.get(ORIGINAL_KEY_HEADER) or frame.routing_key or ""
        return Delivery(str(key), message.body, headers, prior + redeliveries + 1, queue)

    async def _on_batch(self, link: Link, acks: AckWindow, tag: int, message: DeliveredMessage,
                        outer: Delivery) -> None:
        """Each event of a batch in order, each with its own fate; the batch message is acked once every
        event is settled (a retried or dead-lettered event is republished alone, confirmed)."""
        try:
            events = unpack(outer)
        except BatchFormatError as exc:
            # Handed to the subscriber as one message, so its dead letter is counted and logged where every
            # other bad input is (the handler's metrics), not parked here behind its back.
            LOG.warning("malformed batch on %s: %s", outer.queue, exc)
            single = replace(outer, headers={k: v for k, v in outer.headers.items() if k != BATCH_HEADER})
            await self._finish(link, acks, tag, message, single, await self._outcome(single))
            return
        try:
            for event in events:
                await self._settle(link, message, event, await self._outcome(event))
        except Exception as exc:
            # A republish failed: the whole batch goes back (its settled events come again: at least once).
            LOG.debug("could not settle a batch on %s: %s: %s", outer.queue, type(exc).__name__, exc)
            await acks.nack(tag)
            return
        acks.ack(tag)

    async def _finish(
        self, link: Link, acks: AckWindow, tag: int, message: DeliveredMessage, delivery: Delivery, outcome: Outcome
    ) -> None:
        try:
            if not await self._settle(link, message, delivery, outcome):
                # The queue is going away (a tap being cancelled): leave it to the broker's requeue.
                await acks.nack(tag)
                return
        except Exception as exc:
            # The channel or connection is gone (the broker redelivers the unacked message), or a republish
            # was refused: either way the message stays with the broker, never dropped.
            LOG.debug("could not settle a delivery on %s: %s: %s", delivery.queue, type(exc).__name__, exc)
            await acks.nack(tag)
            return
        acks.ack(tag)

    async def _settle(self, link: Link, message: DeliveredMessage, delivery: Delivery, outcome: Outcome) -> bool:
        """Carry out a requeue (republished with its attempt count) or a dead letter; an ack needs nothing
        here. False when the queue no longer takes the retry."""
        if outcome.fate is Fate.REQUEUE:
            return await self._republish_retry(link, message, delivery)
        if outcome.fate is Fate.DEAD_LETTER:
            await self._publish_dead_letter(link, message, delivery, outcome.reason or "dead-lettered")
            outcome.parked()
        return True

    async def _republish_retry(self, link: Link, message: DeliveredMessage, delivery: Delivery) -> bool:
        """Republish to the same queue with the attempt count; False if the queue no longer takes it."""
        headers = dict(delivery.headers)
        headers.pop(DELIVERY_COUNT_HEADER, None)
        headers.pop(BATCH_HEADER, None)
        headers[self._attempt_header] = delivery.attempt
        headers[ORIGINAL_KEY_HEADER] = delivery.routing_key
        copy = _copy(message, delivery.body, headers, persistent=False)
        try:
            await confirmed_publish(
                link.default, copy, delivery.queue, mandatory=True, timeout=self._settings.timeout
            )
        except PublishRefused:
            return False
        return True

    async def _publish_dead_letter(
        self, link: Link, message: DeliveredMessage, delivery: Delivery, reason: str
    ) -> None:
        """Publish a confirmed, persistent record to the dlx under the original key. A subscriber of the
        dead letters parks its own rejects in the dead-letter queue: the dlx would loop them back."""
        headers = dead_letter_headers(delivery, reason)
        headers.pop(DELIVERY_COUNT_HEADER, None)
        headers.pop(TAP_ATTEMPTS_HEADER, None)
        headers.pop(BATCH_HEADER, None)
        if self.spec.source is Source.DEAD_LETTERS:
            exchange, key = link.default, self._settings.topology.dead_letter_queue
        else:
            exchange, key = link.dlx, delivery.routing_key
        copy = _copy(message, delivery.body, headers, persistent=True)
        await confirmed_publish(exchange, copy, key, mandatory=False, timeout=self._settings.timeout)


class QueueFigures(NamedTuple):
    """What a passive declare tells about a queue."""

    messages: int
    consumers: int


async def queue_figures(link: Link, queue: str, timeout: float) -> QueueFigures:
    """Ask the broker about ``queue``, on a throwaway channel (a 404, ``ChannelNotFoundEntity``, closes it)."""
    channel: AbstractRobustChannel = await link.connection.channel(publisher_confirms=False)
    try:
        async with asyncio.timeout(timeout):
            declared = await channel.declare_queue(queue, passive=True, robust=False)
        result = declared.declaration_result
        return QueueFigures(int(result.message_count or 0), int(result.consumer_count or 0))
    finally:
        await _close_quietly(channel, timeout)
