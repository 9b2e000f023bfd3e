"""``Advertiser``: this process's one ``_thatdam._tcp.local.`` record, registered, kept current, withdrawn.

``set`` is synchronous (a session calls it from its role-change path) and only records what the record should
say; ``run``, a task of the owner's group, registers the first version, pushes each later change as an update
(the newest one wins when changes come faster than broadcasts), and sends the goodbye when cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Sequence

from zeroconf import NonUniqueNameException
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from thatdam_bus.discovery.addresses import Address
from thatdam_bus.discovery.records import SERVICE_TYPE, Advert, parse_endpoint

log = logging.getLogger("thatdam_bus.discovery")
GOODBYE_TIMEOUT_S = 2.0
RETRY_S = 5.0
"""After a failed registration or update: try again this much later (or at the next change)."""


def service_info(advert: Advert, addresses: Sequence[Address]) -> AsyncServiceInfo:
    """The record: SRV port = the advertised AMQP port (0 without one), A records = our reachable addresses,
    host name ``<node id>.local.``."""
    port = parse_endpoint(advert.amqp)[1] if advert.amqp else 0
    label = advert.instance_name.split(".", 1)[0]
    return AsyncServiceInfo(
        SERVICE_TYPE, advert.instance_name, port=port, properties=advert.properties(),
        server=f"{label}.local.", addresses=[socket.inet_aton(a.ip) for a in addresses],
    )


class Advertiser:
    """Keeps one record equal to the last ``set``; nothing is registered before the first ``set``."""

    def __init__(self, zeroconf: AsyncZeroconf, addresses: Sequence[Address]) -> None:
        self._zc = zeroconf
        self._addresses = list(addresses)
        self._wanted: Advert | None = None
        self._changed = asyncio.Event()
        self.published: Advert | None = None

    def set(self, advert: Advert) -> None:
        if advert != self._wanted:
            self._wanted = advert
            self._changed.set()

    async def run(self) -> None:
        registered: AsyncServiceInfo | None = None
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(None if self.published == self._wanted else RETRY_S):
                        await self._changed.wait()
                self._changed.clear()
                registered = await self._publish(registered)
        finally:
            if registered is not None:
                await self._withdraw(registered)

    async def _publish(self, registered: AsyncServiceInfo | None) -> AsyncServiceInfo | None:
        advert = self._wanted
        if advert is None or advert == self.published:
            return registered
        info = service_info(advert, self._addresses)
        try:
            if registered is None:
                await (await self._zc.async_register_service(info))
                log.info("mDNS: advertising %s as %s (amqp=%s redis=%s)", advert.instance_name, advert.role,
                         advert.amqp, advert.redis)
            else:
                await (await self._zc.async_update_service(info))
                log.debug("mDNS: record now says role=%s epoch=%d", advert.role, advert.epoch)
        except NonUniqueNameException:
            log.error("mDNS: %s is already advertised by another process; not advertising",
                      advert.instance_name)
            return registered
        except Exception as exc:  # a network hiccup must not take the node down
            log.warning("mDNS: could not publish %s: %r", advert.instance_name, exc)
            return registered
        self.published = advert
        return info

    async def _withdraw(self, info: AsyncServiceInfo) -> None:
        """Goodbye packets (TTL 0), with a deadline: shutdown never hangs on the network."""
        try:
            async with asyncio.timeout(GOODBYE_TIMEOUT_S):
                await (await self._zc.async_unregister_service(info))
        except Exception as exc:
            log.warning("mDNS: could not withdraw %s: %r", info.name, exc)
        self.published = None
