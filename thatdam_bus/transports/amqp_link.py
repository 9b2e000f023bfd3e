"""One connection epoch to RabbitMQ (a FastStream ``RabbitBroker`` and its channels); confirmed publishing.

A ``Link`` is thrown away as a whole when its connection drops; the supervisor in ``amqp_recovery`` builds the
next one. Nothing is reused across epochs, so no stale channel, cached declaration or half-restored consumer
from aio-pika's own robust machinery can leak into the new connection (aio-pika #231/#536, faststream #2758).

FastStream owns the connection, its confirming default channel and the shared declarations. Messages are
published with aio-pika on the exchange objects FastStream's declarer returns, not through
``RabbitBroker.publish``: measured on this box, FastStream's publish pipeline (publish command, middleware
chain, encoder, per-call declarer lookup) costs 50-80 us more CPU per message than ``Exchange.publish``
(about 1.4x), which alone breaks the 0.85x-of-raw-aio-pika budget. Transient publishes use a second,
non-confirming channel: FastStream only has its confirming default channel, and a fire-and-forget event
should not wait a broker round trip. Transient messages go straight to that channel's aiormq
``basic_publish`` (``publish_transient``): aio-pika's ``Message`` and ``Exchange.publish`` wrappers cost
about a fifth of a small publish, and add nothing a fire-and-forget message needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, cast

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractRobustConnection
from aiormq import Channel
from aiormq.abc import DeliveredMessage
from aiormq.exceptions import AMQPChannelError, AMQPError, DeliveryError
from faststream.rabbit import RabbitBroker, RabbitExchange
from pamqp.commands import Basic
from yarl import URL

from thatdam_bus.errors import PublishRefused, TransportError, TransportUnavailable
from thatdam_bus.transports.amqp_topology import Topology, declare_core

LOG = logging.getLogger("thatdam_bus.transports.amqp")

CONTENT_TYPE = "application/json"
APP_ID = "thatdam-bus"
DEFAULT_EXCHANGE = RabbitExchange()
# aio-pika's own reconnect loop sleeps this long after a successful connect before it would reconnect; we
# retire a lost connection well within it, so the robust connection rarely races our recovery.
_AIO_PIKA_RECONNECT_INTERVAL = 3600.0
DRAIN_EVERY = 32
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (AMQPError, ConnectionError, OSError, RuntimeError)
# What a connect attempt or a deadline-bounded operation can raise when the broker is not there.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, *CONNECTION_ERRORS)


@dataclass(frozen=True)
class LinkSettings:
    """How to reach the broker; shared by every epoch."""

    url: str
    connection_name: str
    connect_timeout: float
    confirm_timeout: float


@dataclass(eq=False)
class Link:
    """One live connection: its broker, and the exchanges to publish on (confirmed ones on FastStream's
    default channel, ``fast`` on a channel without confirms).

    ``lost`` is set by the connection's close callback, whoever closed it; it is the single signal recovery
    waits on, so a drop that happens while recovery is still restoring the epoch is not missed.
    """

    broker: RabbitBroker
    connection: AbstractRobustConnection
    events: AbstractExchange
    dlx: AbstractExchange
    default: AbstractExchange
    fast: AbstractExchange
    fast_channel: Channel
    events_channel: Channel
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    transient_sent: int = 0
    confirm_waits: set[asyncio.Timeout] = field(default_factory=set)
    """The deadlines of publishes waiting for their confirm on this link (``give_up`` expires them)."""

    def give_up(self) -> None:
        """The broker is out of reach: mark the link lost and expire every confirm wait on it now. A confirm
        that cannot come would otherwise hold its publisher (and a node moving to solo) for the whole deadline;
        expired, the publish fails as unavailable and the ``Bus`` holds a durable event in its outbox."""
        self.lost.set()
        now = asyncio.get_running_loop().time()
        for deadline in list(self.confirm_waits):
            deadline.reschedule(now)


def _new_broker(settings: LinkSettings, lost: asyncio.Event) -> RabbitBroker:
    def on_close(_connection: object, _exc: BaseException | None = None) -> None:
        lost.set()

    # FastStream folds ``client_properties`` into URL query keys that aiormq ignores (faststream 0.7.8,
    # aiormq 7.2), so a ``connection_name`` given that way never reaches the broker; ``?name=`` does.
    url = URL(settings.url).update_query(name=settings.connection_name)
    return RabbitBroker(
        url,
        timeout=settings.connect_timeout,
        fail_fast=True,
        reconnect_interval=_AIO_PIKA_RECONNECT_INTERVAL,
        on_close=[on_close],
        app_id=APP_ID,
        # FastStream logs "Received"/"Processed" per message at log_level; we run no FastStream subscribers,
        # and its remaining service messages go to our logger at DEBUG.
        logger=LOG,
        log_level=logging.DEBUG,
        apply_types=False,
    )


async def open_link(settings: LinkSettings, topology: Topology) -> Link:
    """Connect, declare the shared topology and open the transient-publish channel, all within deadlines."""
    lost = asyncio.Event()
    broker = _new_broker(settings, lost)
    try:
        async with asyncio.timeout(settings.connect_timeout):
            connection = await broker.connect()
        async with asyncio.timeout(settings.confirm_timeout):
            events, dlx = await declare_core(broker, topology)
            default = await broker.declare_exchange(DEFAULT_EXCHANGE)
            channel = await connection.channel(publisher_confirms=False)
            fast = await channel.get_exchange(topology.exchange, ensure=False)
            fast_channel = cast(Channel, await channel.get_underlay_channel())
            events_channel = cast(Channel, await cast(aio_pika.Exchange, events).channel.get_underlay_channel())
    except BaseException:
        await retire(broker, settings.connect_timeout)
        raise
    return Link(broker, connection, events=events, dlx=dlx, default=default, fast=fast,
                fast_channel=fast_channel, events_channel=events_channel, lost=lost)


async def retire(broker: RabbitBroker, timeout: float) -> None:
    """Close a broker best-effort: its connection may be dead already, and closing must not hang recovery."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout):
            await broker.stop()


def new_message(body: bytes, headers: dict[str, Any] | None, persistent: bool,
                content_type: str = CONTENT_TYPE) -> aio_pika.Message:
    mode = aio_pika.DeliveryMode.PERSISTENT if persistent else aio_pika.DeliveryMode.NOT_PERSISTENT
    return aio_pika.Message(
        body, headers=headers, content_type=content_type, delivery_mode=mode, app_id=APP_ID
    )


async def publish_transient(link: Link, routing_key: str, body: bytes, headers: dict[str, Any] | None,
                            content_type: str = CONTENT_TYPE) -> None:
    """Fire-and-forget on the non-confirming channel: the same properties as ``new_message`` gives, and the
    envelope id (``ce-id``) as ``message_id`` when there is one (aiormq would otherwise make a random one).

    Only every ``DRAIN_EVERY``-th publish waits until the connection's writer has written it (and drained
    the socket if the broker is slow to read); the others return once queued in aiormq's bounded frame queue.
    Waiting on every one (aio-pika's way) costs a loop iteration per message, most of a small publish's CPU,
    while this still bounds what a fast publisher can buffer to ``DRAIN_EVERY`` messages plus the socket's
    high-water mark."""
    properties = Basic.Properties(content_type=content_type, delivery_mode=1, headers=headers, app_id=APP_ID,
                                  message_id=headers.get("ce-id") if headers else None)
    link.transient_sent += 1
    try:
        await link.fast_channel.basic_publish(body, exchange=link.fast.name, routing_key=routing_key,
                                              properties=properties, wait=link.transient_sent % DRAIN_EVERY == 0)
    except CONNECTION_ERRORS as exc:
        raise as_transport_error(exc, f"publish to {routing_key!r}") from exc


async def publish_confirmed(link: Link, routing_key: str, body: bytes, headers: dict[str, Any] | None, *,
                            persistent: bool, mandatory: bool, timeout: float,
                            content_type: str = CONTENT_TYPE) -> None:
    """The transport's own confirmed publish, straight on the confirming channel's aiormq ``basic_publish``
    (what ``confirmed_publish`` does through aio-pika, less its per-message wrappers). It does not wait for
    the frame to be written before releasing the channel, only for the broker's confirm, so a window of
    concurrent publishers fills the socket in one go instead of one frame per loop iteration."""
    properties = Basic.Properties(content_type=content_type, delivery_mode=2 if persistent else 1,
                                  headers=headers, app_id=APP_ID)
    try:
        async with asyncio.timeout(timeout) as deadline:
            link.confirm_waits.add(deadline)
            try:
                result = await link.events_channel.basic_publish(
                    body, exchange=link.events.name, routing_key=routing_key, properties=properties,
                    mandatory=mandatory, wait=False)
            finally:
                link.confirm_waits.discard(deadline)
    except DeliveryError as exc:
        raise PublishRefused(f"broker refused message for {routing_key!r}: {exc}") from exc
    except TimeoutError as exc:
        if link.lost.is_set():
            raise TransportUnavailable(f"the connection was given up before {routing_key!r} was confirmed") from exc
        raise TransportUnavailable(f"no publisher confirm for {routing_key!r} within {timeout}s") from exc
    except CONNECTION_ERRORS as exc:
        raise as_transport_error(exc, f"publish to {routing_key!r}") from exc
    _check_confirm(result, routing_key, link.events.name)


async def confirmed_publish(
    exchange: AbstractExchange,
    message: aio_pika.Message,
    routing_key: str,
    *,
    mandatory: bool,
    timeout: float,
) -> None:
    """Publish on a confirming channel and turn the broker's answer into our errors.

    The deadline is ours: FastStream's ``publish(timeout=...)`` is not applied to the confirm wait in 0.7.8
    (only ``request`` uses it), and aio-pika waits unbounded by default. With ``on_return_raises=False``
    (FastStream's default channel) a returned message resolves the confirmation with the ``DeliveredMessage``.
    """
    try:
        async with asyncio.timeout(timeout):
            result = await exchange.publish(message, routing_key, mandatory=mandatory)
    except DeliveryError as exc:
        raise PublishRefused(f"broker refused message for {routing_key!r}: {exc}") from exc
    except TimeoutError as exc:
        raise TransportUnavailable(f"no publisher confirm for {routing_key!r} within {timeout}s") from exc
    except CONNECTION_ERRORS as exc:
        raise as_transport_error(exc, f"publish to {routing_key!r}") from exc
    _check_confirm(result, routing_key, exchange.name)


def _check_confirm(result: object, routing_key: str, exchange: str) -> None:
    if isinstance(result, DeliveredMessage):
        raise PublishRefused(f"unroutable: no queue is bound for {routing_key!r} on {exchange!r}")
    if not isinstance(result, Basic.Ack):
        raise PublishRefused(f"broker did not ack message for {routing_key!r}: {result!r}")


def as_transport_error(exc: BaseException, doing: str) -> TransportError:
    """A channel-level refusal (precondition failed, access refused) is the broker saying no, no outage."""
    if isinstance(exc, AMQPChannelError):
        return TransportError(f"broker refused {doing}: {exc}")
    return TransportUnavailable(f"{doing} failed, broker unavailable: {type(exc).__name__}: {exc}")
