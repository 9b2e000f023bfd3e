"""The RabbitMQ transport: the ``Transport`` contract on a topic exchange, via FastStream's ``RabbitBroker``.

Layout of the implementation:

* ``amqp_topology``: names and declarations (``<prefix>``, ``<prefix>.dlx``, ``<prefix>.dead-letters``);
* ``amqp_link``: one connection epoch (a FastStream broker) and confirmed publishing;
* ``amqp_recovery``: the supervisor that replaces a lost epoch with backoff and restores it;
* ``amqp_consumer``: one subscription: channel, queue, consumer and delivery settlement;
* ``batching``: the opt-in batching of high-rate routing keys (``batch=BatchPolicy(...)``).

This class wires them together and keeps the only strong references to the subscriptions, which is what
recovery walks after a reconnect (aio-pika's robust objects are weakly held and have come back with zero
consumers: aio-pika #231/#536, faststream #2758).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from aiormq.exceptions import ChannelNotFoundEntity

from thatdam_bus.errors import ConfigError, TransportClosed, TransportUnavailable
from thatdam_bus.transports.amqp_consumer import AmqpSubscription, ConsumerSettings, QueueFigures, queue_figures
from thatdam_bus.transports.amqp_link import (
    LOG,
    UNAVAILABLE_ERRORS,
    Link,
    LinkSettings,
    as_transport_error,
    open_link,
    publish_confirmed,
    publish_transient,
)
from thatdam_bus.transports.amqp_recovery import LinkState, Supervisor
from thatdam_bus.transports.amqp_topology import Topology
from thatdam_bus.transports.base import Capabilities, DeliveryCallback, QueueKind, QueueSpec, Subscription
from thatdam_bus.transports.batching import BATCH_CONTENT_TYPE, Batcher, BatchPolicy

__all__ = ["AmqpTransport", "QueueFigures"]


def _host_of(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in {"amqp", "amqps"}:
        raise ConfigError(f"not an AMQP URL (amqp:// or amqps://): scheme {parts.scheme!r}")
    return f"{parts.hostname or 'localhost'}:{parts.port or (5671 if parts.scheme == 'amqps' else 5672)}"


class AmqpTransport:
    """RabbitMQ transport. Durable publishes are persistent and confirmed; recovery is owned here."""

    capabilities = Capabilities(
        scheme="amqp", cross_host=True, survives_restart=True, publisher_confirms=True
    )

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "thatdam",
        max_attempts: int = 3,
        reconnect_max_delay: float = 10.0,
        connect_timeout: float = 5.0,
        queue_type: str = "classic",
        confirm_timeout: float = 10.0,
        connection_name: str | None = None,
        batch: BatchPolicy | None = None,
    ) -> None:
        """``batch``: publish events whose routing key matches one of its patterns several to a message
        (see ``batching``); consumers unpack batches whatever their own policy."""
        if max_attempts < 1:
            raise ConfigError("max_attempts must be >= 1")
        try:
            self._topology = Topology(prefix, queue_type)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        self._host = _host_of(url)
        self._prefix = prefix
        self._connect_timeout = connect_timeout
        self._confirm_timeout = confirm_timeout
        self._settings = LinkSettings(
            url=url,
            # Names the connection in the broker's management view; also how the recovery test finds it.
            connection_name=connection_name
            or parse_qs(urlsplit(url).query).get("name", [""])[0]
            or f"thatdam-bus {prefix} {socket.gethostname()}:{os.getpid()}",
            connect_timeout=connect_timeout,
            confirm_timeout=confirm_timeout,
        )
        self._consumer_settings = ConsumerSettings(
            topology=self._topology, max_attempts=max_attempts, timeout=confirm_timeout
        )
        self._subscriptions: set[AmqpSubscription] = set()
        self._supervisor = Supervisor(
            self._open_link, self._restore, max_delay=reconnect_max_delay,
            restore_timeout=connect_timeout + confirm_timeout, retire_timeout=connect_timeout,
        )
        self._batcher = Batcher(batch, self._send_batch) if batch is not None else None
        self._closed = False
        self._abandoned = False

    @property
    def connection_name(self) -> str:
        return self._settings.connection_name

    @property
    def batcher(self) -> Batcher | None:
        """The batching publisher (its ``batches_sent`` / ``events_sent``), when a batch policy is set."""
        return self._batcher

    @property
    def connected(self) -> bool:
        """True while the connection is up (false while reconnecting): the node falls back to solo on it."""
        return not self._closed and self._supervisor.state is LinkState.CONNECTED

    @property
    def recoveries(self) -> int:
        """How many times a lost connection has been replaced and restored (for health checks and tests)."""
        return self._supervisor.recoveries

    def __repr__(self) -> str:
        state = LinkState.CLOSED if self._closed else self._supervisor.state
        return (
            f"AmqpTransport(host={self._host!r}, prefix={self._prefix!r}, state={state.value!r}, "
            f"subscriptions={len(self._subscriptions)})"
        )

    async def start(self) -> None:
        """Connect and declare; the first connect fails fast with ``TransportUnavailable``."""
        self._check_open()
        if self._supervisor.state is not LinkState.NEW:
            return
        try:
            await self._supervisor.start()
        except UNAVAILABLE_ERRORS as exc:
            raise TransportUnavailable(
                f"cannot reach RabbitMQ at {self._host} within {self._connect_timeout}s: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    async def publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        headers: Mapping[str, Any] | None = None,
        durable: bool = False,
        mandatory: bool = False,
    ) -> None:
        """Durable/mandatory: persistent (if durable) and confirmed within ``confirm_timeout``. Otherwise
        fire-and-forget on a channel without confirms. While reconnecting, waits up to ``connect_timeout``.
        A routing key the batch policy covers is batched (mandatory publishes never are)."""
        self._check_open()
        if self._batcher is not None and not mandatory and self._batcher.wants(routing_key):
            await self._batcher.publish(routing_key, body, headers, durable)
            return
        link = await self._supervisor.current(self._connect_timeout)
        if not (durable or mandatory):
            await publish_transient(link, routing_key, body, dict(headers) if headers else None)
            return
        # A return is only reported through the confirm, so mandatory needs one too.
        await publish_confirmed(link, routing_key, body, dict(headers) if headers else None, persistent=durable,
                                mandatory=mandatory, timeout=self._confirm_timeout)

    async def subscribe(self, spec: QueueSpec, callback: DeliveryCallback) -> Subscription:
        """Returns once the queue is declared, bound and consumed; recovery re-attaches it on reconnect."""
        self._check_open()
        link = await self._supervisor.current(self._connect_timeout)
        subscription = AmqpSubscription(spec, callback, self._consumer_settings, self._subscriptions.discard)
        self._subscriptions.add(subscription)
        try:
            async with asyncio.timeout(self._connect_timeout + self._confirm_timeout):
                await subscription.attach(link)
        except BaseException as exc:
            await subscription.cancel()
            if isinstance(exc, UNAVAILABLE_ERRORS):
                raise as_transport_error(exc, f"subscribe {spec.patterns!r}") from exc
            raise
        return subscription

    async def consumer_counts(self) -> dict[str, int]:
        """Consumers the broker reports on each durable queue this transport consumes (health checks)."""
        link = await self._supervisor.current(self._connect_timeout)
        return {subscription.queue: (await queue_figures(link, subscription.queue, self._confirm_timeout)).consumers
                for subscription in list(self._subscriptions)
                if subscription.spec.kind is QueueKind.DURABLE and not subscription.cancelled}

    async def queue_figures(self, queues: Iterable[str]) -> dict[str, QueueFigures]:
        """Messages and consumers of each named queue that exists, whoever declared it (a queue the broker does
        not have is left out): how ``thatdam status`` finds work whose only consumer is gone, without the
        management plugin. A passive declare each, on a throwaway channel (a 404 closes it)."""
        link = await self._supervisor.current(self._connect_timeout)
        found: dict[str, QueueFigures] = {}
        for queue in queues:
            with contextlib.suppress(ChannelNotFoundEntity):
                found[queue] = await queue_figures(link, queue, self._confirm_timeout)
        return found

    def abandon(self) -> None:
        """The broker is out of reach (a partition): from now on nothing here waits for it. Publishes fail at
        once, nothing reconnects, every subscription is dropped without a round trip; ``aclose`` then only
        retires the dead connection under its deadline. A node moving to solo calls this first, so it is not
        held up by one broker deadline per consumer."""
        self._abandoned = True
        self._supervisor.abandon()
        for subscription in list(self._subscriptions):
            subscription.abandon()

    async def aclose(self) -> None:
        """Cancel every subscription (each bounded by its own deadline) and disconnect. Idempotent."""
        if self._closed:
            return
        if self._batcher is not None:
            await self._batcher.aclose(0.0 if self._abandoned else self._connect_timeout + self._confirm_timeout)
        self._closed = True
        for subscription in list(self._subscriptions):
            await subscription.cancel()
        await self._supervisor.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _send_batch(self, routing_key: str, body: bytes, headers: dict[str, Any], durable: bool) -> None:
        link = await self._supervisor.current(self._connect_timeout)
        if not durable:
            await publish_transient(link, routing_key, body, headers, content_type=BATCH_CONTENT_TYPE)
            return
        await publish_confirmed(link, routing_key, body, headers, persistent=True, mandatory=False,
                                timeout=self._confirm_timeout, content_type=BATCH_CONTENT_TYPE)

    def _check_open(self) -> None:
        if self._closed:
            raise TransportClosed("the AMQP transport was used after aclose()")

    async def _open_link(self) -> Link:
        return await open_link(self._settings, self._topology)

    async def _restore(self, link: Link) -> None:
        """After a reconnect: re-consume every live subscription, then check the broker agrees. One queue that
        cannot be restored (e.g. declared elsewhere with other arguments) must not block the others."""
        subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            try:
                await subscription.attach(link)
            except Exception as exc:
                if link.lost.is_set():
                    raise
                LOG.error("could not restore %r: %s: %s", subscription, type(exc).__name__, exc)
        for subscription in subscriptions:
            await self._check_consumers(link, subscription)

    async def _check_consumers(self, link: Link, subscription: AmqpSubscription) -> None:
        if subscription.cancelled:
            return
        try:
            count = (await queue_figures(link, subscription.queue, self._confirm_timeout)).consumers
        except Exception as exc:
            LOG.warning("could not verify consumers of %s after recovery: %s", subscription.queue, exc)
            return
        if count == 0:
            LOG.warning(
                "QUEUE %s HAS ZERO CONSUMERS after RabbitMQ recovery: work for %s will pile up unconsumed",
                subscription.queue, subscription.spec.patterns,
            )
