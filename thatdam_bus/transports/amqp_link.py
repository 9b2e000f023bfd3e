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
should not wait a broker round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractRobustConnection
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
    lost: asyncio.Event = field(default_factory=asyncio.Event)


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
    except BaseException:
        await retire(broker, settings.connect_timeout)
        raise
    return Link(broker, connection, events=events, dlx=dlx, default=default, fast=fast, lost=lost)


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
    if isinstance(result, DeliveredMessage):
        raise PublishRefused(f"unroutable: no queue is bound for {routing_key!r} on {exchange.name!r}")
    if not isinstance(result, Basic.Ack):
        raise PublishRefused(f"broker did not ack message for {routing_key!r}: {result!r}")


def as_transport_error(exc: BaseException, doing: str) -> TransportError:
    """A channel-level refusal (precondition failed, access refused) is the broker saying no, no outage."""
    if isinstance(exc, AMQPChannelError):
        return TransportError(f"broker refused {doing}: {exc}")
    return TransportUnavailable(f"{doing} failed, broker unavailable: {type(exc).__name__}: {exc}")
