"""Transports: RabbitMQ (``amqp://``) and the embedded broker (``embedded://``, and its local socket for tools),
behind one contract (``base.Transport``). The URL scheme picks the driver."""

from __future__ import annotations

import logging
from pathlib import Path

from thatdam_bus.config import Settings
from thatdam_bus.errors import TransportUnavailable
from thatdam_bus.transports.base import Transport

log = logging.getLogger("thatdam_bus.transports")


async def connect_amqp(settings: Settings) -> Transport | None:
    """A started RabbitMQ transport, or None (with one log line) when no URL is set or it is unreachable."""
    if settings.amqp_url is None:
        return None
    from thatdam_bus.transports.amqp import AmqpTransport

    transport = AmqpTransport(
        str(settings.amqp_url),
        prefix=settings.prefix,
        max_attempts=settings.max_attempts,
        connect_timeout=settings.connect_timeout,
        queue_type=settings.queue_type,
    )
    try:
        await transport.start()
    except TransportUnavailable as exc:
        log.warning("RabbitMQ at %s is unreachable (%s)", transport, exc)
        await transport.aclose()
        return None
    return transport


async def connect_node_transport(settings: Settings) -> Transport:
    """What a node runs on: RabbitMQ when set and reachable, else the embedded broker with its local socket."""
    transport = await connect_amqp(settings)
    if transport is not None:
        return transport
    from thatdam_bus.transports.embedded import EmbeddedTransport

    embedded = EmbeddedTransport(
        prefix=settings.prefix, max_attempts=settings.max_attempts, socket_path=settings.socket_path
    )
    await embedded.start()
    return embedded


async def connect_tool_transport(settings: Settings) -> Transport:
    """What a tool (bus-tail, publish) talks to: RabbitMQ when set and reachable, else a local node's socket."""
    transport = await connect_amqp(settings)
    if transport is not None:
        return transport
    from thatdam_bus.transports.socket_client import SocketTransport

    client = SocketTransport(Path(settings.socket_path), prefix=settings.prefix)
    try:
        await client.start()
    except TransportUnavailable as exc:
        raise TransportUnavailable(
            f"no broker: THATDAM_AMQP_URL is {'unreachable' if settings.amqp_url else 'unset'} and no solo node "
            f"listens at {settings.socket_path} ({exc})"
        ) from exc
    return client
