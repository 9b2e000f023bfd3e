"""Connection recovery owned by the transport, not by aio-pika's robust connection.

aio-pika's ``RobustConnection`` restores only what it still holds weak references to, and in the field it has
come back with zero consumers (aio-pika #231, #536; faststream #2758). So the transport treats a dropped
connection as the end of an epoch: the ``Supervisor`` retires the whole ``Link``, reconnects with capped,
jittered exponential backoff, and hands the fresh link to a ``restore`` callback that re-declares the topology
and re-consumes every subscription from the transport's own strong references.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from enum import StrEnum

from thatdam_bus.errors import TransportUnavailable
from thatdam_bus.transports.amqp_link import LOG, Link, retire

BACKOFF_BASE = 0.1


class LinkState(StrEnum):
    NEW = "new"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


def backoff_delay(attempt: int, cap: float, base: float = BACKOFF_BASE) -> float:
    """Equal-jitter exponential backoff: at least half the step (no hot loop against a dead broker), at most
    the step, and the step capped at ``cap`` so a long outage is still noticed within ``cap`` seconds. The
    jitter keeps a cluster of nodes from reconnecting to a restarted broker in lock step."""
    step = min(cap, base * float(2 ** min(attempt, 30)))
    return float(step / 2 + random.uniform(0, step / 2))


class Supervisor:
    """Holds the current ``Link`` and replaces it when its connection drops."""

    def __init__(
        self,
        open_link: Callable[[], Awaitable[Link]],
        restore: Callable[[Link], Awaitable[None]],
        *,
        max_delay: float,
        restore_timeout: float,
        retire_timeout: float,
    ) -> None:
        self._open_link = open_link
        self._restore = restore
        self._max_delay = max_delay
        self._restore_timeout = restore_timeout
        self._retire_timeout = retire_timeout
        self._link: Link | None = None
        self._retiring: Link | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.state = LinkState.NEW
        self.recoveries = 0

    async def start(self) -> None:
        """First connect fails fast: the caller's error, not a background retry, is what an operator needs."""
        link = await self._open_link()
        self._install(link)
        self._task = asyncio.create_task(self._watch(), name="thatdam-amqp-recovery")

    @property
    def link(self) -> Link | None:
        return self._link

    async def current(self, timeout: float) -> Link:
        """The live link, waiting up to ``timeout`` for recovery to bring one back."""
        link = self._link
        if link is not None and not link.lost.is_set():
            return link
        if self.state is LinkState.NEW:
            raise TransportUnavailable("transport not started: call start() first")
        try:
            async with asyncio.timeout(timeout):
                while (link := self._link) is None or link.lost.is_set():
                    if self.state is LinkState.CLOSED:
                        raise TransportUnavailable("transport is closed")
                    self._ready.clear()
                    await self._ready.wait()
        except TimeoutError:
            raise TransportUnavailable(f"RabbitMQ connection not back within {timeout}s") from None
        return link

    def _install(self, link: Link) -> None:
        self._link = link
        self.state = LinkState.CONNECTED
        self._ready.set()

    async def _watch(self) -> None:
        while True:
            link = self._link
            assert link is not None
            await link.lost.wait()
            self.state = LinkState.RECONNECTING
            LOG.warning("RabbitMQ connection lost; reconnecting (backoff capped at %.1fs)", self._max_delay)
            await retire(link.broker, self._retire_timeout)
            self._install(await self._reconnect())
            self.recoveries += 1
            LOG.warning("RabbitMQ connection recovered (recovery #%d)", self.recoveries)

    async def _reconnect(self) -> Link:
        attempt = 0
        while True:
            await asyncio.sleep(backoff_delay(attempt, self._max_delay))
            attempt += 1
            link = await self._try_link(attempt)
            if link is not None:
                return link

    async def _try_link(self, attempt: int) -> Link | None:
        """One reconnect attempt: connect, then restore within a deadline; a link that dropped meanwhile is
        discarded rather than installed, so the watcher never waits on an already-dead connection."""
        try:
            link = await self._open_link()
        except Exception as exc:
            LOG.warning("reconnect attempt %d failed: %s: %s", attempt, type(exc).__name__, exc)
            return None
        try:
            async with asyncio.timeout(self._restore_timeout):
                await self._restore(link)
        except asyncio.CancelledError:  # closed or abandoned meanwhile: this link was never installed
            await retire(link.broker, self._retire_timeout)
            raise
        except Exception as exc:
            LOG.warning("restore after reconnect attempt %d failed: %s: %s", attempt, type(exc).__name__, exc)
            link.lost.set()
        if link.lost.is_set():
            await retire(link.broker, self._retire_timeout)
            return None
        return link

    def abandon(self) -> None:
        """The broker is out of reach: from now on ``current`` fails at once, nothing reconnects, and publishes
        waiting for a confirm on the last link fail now (``Link.give_up``). ``aclose`` still retires that
        connection (bounded), off the caller's critical path."""
        link = self._link
        self._close_for_good()
        if link is not None:
            link.give_up()

    def _close_for_good(self) -> None:
        self.state = LinkState.CLOSED
        if self._task is not None:
            self._task.cancel()
        if self._link is not None:  # kept for aclose, which retires it (abandon may have come first)
            self._retiring, self._link = self._link, None
        self._ready.set()

    async def aclose(self) -> None:
        self._close_for_good()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        link, self._retiring = self._retiring, None
        if link is not None:
            await retire(link.broker, self._retire_timeout)
