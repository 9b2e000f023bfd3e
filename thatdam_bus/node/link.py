"""The link: which broker and which lease this node runs on right now, and how to tell when that should change.

``cluster``: RabbitMQ plus the Redis lease. ``solo``: the embedded broker (with its local socket for tools) plus
the local lease. Precedence follows the plan (``link_settings``): the explicit environment, else endpoints found
over mDNS, else the ``CLOUD_CONTROL_URL`` hint; with none reachable the node is solo and keeps probing, so it
joins by itself when the infrastructure appears.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from thatdam_bus.config import Settings
from thatdam_bus.discovery.credentials import with_endpoints
from thatdam_bus.discovery.records import Endpoints, cloud_endpoints
from thatdam_bus.lease import open_lease
from thatdam_bus.lease.base import Lease
from thatdam_bus.transports import connect_amqp
from thatdam_bus.transports.base import NetworkTransport, Transport

log = logging.getLogger("thatdam_bus.node.link")
REDIS_PROBE_TIMEOUT_S = 1.0


@dataclass
class Link:
    transport: Transport
    lease: Lease | None
    solo: bool
    settings: Settings
    """The settings it was opened with: their endpoints may have been found by discovery."""
    abandoned: bool = False
    """Given up as out of reach: the next link is solo at once, and closing this one waits for nobody."""

    def abandon(self) -> None:
        """The infrastructure is out of reach: stop waiting on it, so the node reaches solo before its lease
        could expire. ``aclose`` then only retires what is left, under its own deadlines."""
        self.abandoned = True
        if isinstance(self.transport, NetworkTransport):
            self.transport.abandon()

    async def aclose(self) -> None:
        try:
            if self.lease is not None:
                await self.lease.aclose()
        finally:
            await self.transport.aclose()


def link_settings(settings: Settings, discovered: Endpoints | None) -> Settings:
    """The endpoints to try now: explicit ``THATDAM_AMQP_URL`` > mDNS > ``CLOUD_CONTROL_URL`` > none (solo).
    Found endpoints get this node's own credentials (``discovery.credentials``)."""
    if settings.amqp_url is not None:
        return settings
    hint = discovered
    if hint is None and settings.cloud_control_url is not None:
        hint = cloud_endpoints(settings.cloud_control_url)
    return settings if hint is None else with_endpoints(settings, hint)


def redact(url: object) -> str:
    """A URL without credentials: fit for logs, cluster.json and (later) mDNS."""
    parts = urlsplit(str(url))
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


async def redis_reachable(url: str) -> bool:
    """One PING with a deadline: is the lease backend there?"""
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    client = aioredis.from_url(url, socket_connect_timeout=REDIS_PROBE_TIMEOUT_S,
                               socket_timeout=REDIS_PROBE_TIMEOUT_S)
    try:
        async with asyncio.timeout(REDIS_PROBE_TIMEOUT_S * 2):
            return bool(await client.ping())
    except (RedisError, OSError, TimeoutError):
        return False
    finally:
        await client.aclose()


async def tcp_reachable(url: str, timeout_s: float = 1.0) -> bool:
    parts = urlsplit(url)
    default_port = {"amqp": 5672, "amqps": 5671, "redis": 6379, "rediss": 6379}.get(parts.scheme, 0)
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(parts.hostname, parts.port or default_port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def cluster_available(settings: Settings) -> bool:
    """Cheap probe used while solo: the configured broker accepts TCP and the lease backend answers PING."""
    if settings.amqp_url is None or not await tcp_reachable(str(settings.amqp_url)):
        return False
    return settings.redis_url is None or await redis_reachable(str(settings.redis_url))


async def try_cluster_link(settings: Settings, node_id: str) -> Link | None:
    """RabbitMQ (required) plus the Redis lease (when configured and reachable), or None to stay solo."""
    if settings.amqp_url is None:
        return None
    if settings.redis_url is not None and not await redis_reachable(str(settings.redis_url)):
        return None
    transport = await connect_amqp(settings)
    if transport is None:
        return None
    lease = None
    if settings.redis_url is not None:
        lease = open_lease(str(settings.redis_url), key_prefix=f"{settings.prefix}:{settings.cluster}",
                           node_id=node_id, ttl_s=settings.lease_ttl)
    else:
        log.warning("no THATDAM_REDIS_URL: this node joins the cluster but will never lead")
    return Link(transport, lease, solo=False, settings=settings)


async def solo_link(settings: Settings, node_id: str) -> Link:
    from thatdam_bus.transports.embedded import EmbeddedTransport

    transport = EmbeddedTransport(
        prefix=settings.prefix, max_attempts=settings.max_attempts, socket_path=settings.socket_path
    )
    await transport.start()
    lease = open_lease("local://", key_prefix=settings.prefix, node_id=node_id, ttl_s=settings.lease_ttl,
                       state_dir=settings.state_dir)
    return Link(transport, lease, solo=True, settings=settings)
