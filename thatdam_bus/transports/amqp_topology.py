"""RabbitMQ topology of one bus prefix: names, queue arguments, and the declarations that create them.

Everything a prefix owns is derived here so the transport, its recovery path and the test clean-up agree on
names: the topic exchange ``<prefix>``, the dead-letter topic exchange ``<prefix>.dlx``, the parking queue
``<prefix>.dead-letters`` bound to the dlx with ``#``, and one durable work queue ``<prefix>.<spec.name>`` per
service. Declarations are idempotent, so recovery simply runs them again on every new connection.

The shared exchanges go through FastStream's declarer (``RabbitBroker.declare_exchange`` / ``declare_queue``).
Subscription queues are declared with aio-pika on the subscription's own channel instead, because FastStream's
declarer caches one queue object per queue *description* regardless of the channel asked for (so two competing
consumers in one process would silently share a channel and its prefetch), never evicts (one leaked entry per
tap), and binds at most one routing key per queue.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from aio_pika.abc import AbstractRobustChannel, AbstractRobustExchange, AbstractRobustQueue
from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange, RabbitQueue

from thatdam_bus.transports.base import QueueKind, QueueSpec, Source

if TYPE_CHECKING:
    from faststream.rabbit.schemas.queue import ClassicQueueArgs

QUEUE_TYPES = frozenset({"classic", "quorum"})
DEAD_LETTER_EXCHANGE_ARG = "x-dead-letter-exchange"
QUEUE_TYPE_ARG = "x-queue-type"


@dataclass(frozen=True)
class Topology:
    """Names and declaration shapes for one prefix; immutable so every connection epoch declares the same."""

    prefix: str
    queue_type: str = "classic"

    def __post_init__(self) -> None:
        if self.queue_type not in QUEUE_TYPES:
            raise ValueError(f"queue_type must be one of {sorted(QUEUE_TYPES)}, not {self.queue_type!r}")

    @property
    def exchange(self) -> str:
        return self.prefix

    @property
    def dlx(self) -> str:
        return f"{self.prefix}.dlx"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.prefix}.dead-letters"

    def events_schema(self) -> RabbitExchange:
        return RabbitExchange(self.exchange, type=ExchangeType.TOPIC, durable=True, robust=False)

    def dlx_schema(self) -> RabbitExchange:
        return RabbitExchange(self.dlx, type=ExchangeType.TOPIC, durable=True, robust=False)

    def durable_arguments(self, dead_letter: bool = True) -> dict[str, Any]:
        """Arguments of durable queues; the type is always spelled out, as FastStream's declarations do."""
        arguments: dict[str, Any] = {QUEUE_TYPE_ARG: self.queue_type}
        if dead_letter:
            arguments[DEAD_LETTER_EXCHANGE_ARG] = self.dlx
        return arguments

    def source_exchange(self, spec: QueueSpec) -> str:
        return self.dlx if spec.source is Source.DEAD_LETTERS else self.exchange

    def queue_name(self, spec: QueueSpec) -> str:
        """Durable queues are named by the service that owns the work; ephemeral ones get a fresh unique
        name per connection epoch: aio-pika's robust channel never lets the server name a queue, and a fresh
        name avoids RESOURCE_LOCKED while the broker still deletes the old connection's exclusive queue."""
        if spec.kind is QueueKind.DURABLE:
            return f"{self.prefix}.{spec.name}"
        return f"{self.prefix}.tap.{uuid.uuid4().hex[:16]}"


async def declare_core(
    broker: RabbitBroker, topology: Topology
) -> tuple[AbstractRobustExchange, AbstractRobustExchange]:
    """Declare both exchanges and the dead-letter parking queue, non-robust (recovery is ours); returns the
    event exchange and the dlx as aio-pika objects on FastStream's confirming default channel."""
    events = await broker.declare_exchange(topology.events_schema())
    dlx = await broker.declare_exchange(topology.dlx_schema())
    arguments = cast("ClassicQueueArgs", topology.durable_arguments(dead_letter=False))
    parking = await broker.declare_queue(
        RabbitQueue(topology.dead_letter_queue, durable=True, arguments=arguments, robust=False)
    )
    await parking.bind(dlx, routing_key="#", robust=False)
    return events, dlx


async def declare_subscription_queue(
    channel: AbstractRobustChannel, topology: Topology, spec: QueueSpec, name: str
) -> AbstractRobustQueue:
    """Declare a subscription's queue on its own channel and bind every pattern; returns it to consume.

    A durable queue bound to the dlx gets no dead-letter exchange of its own: a dead-letter of a dead-letter
    would otherwise route straight back into it.
    """
    if spec.kind is QueueKind.DURABLE:
        queue = await channel.declare_queue(
            name,
            durable=True,
            arguments=topology.durable_arguments(dead_letter=spec.source is Source.EVENTS),
            robust=False,
        )
    else:
        queue = await channel.declare_queue(name, exclusive=True, auto_delete=True, robust=False)
    exchange = topology.source_exchange(spec)
    for pattern in spec.patterns:
        await queue.bind(exchange, routing_key=pattern, robust=False)
    return queue
