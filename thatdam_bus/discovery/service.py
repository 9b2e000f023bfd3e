"""``open_discovery``: this process's presence on mDNS, one object for the node and ``advertise-infra``.

``Discovery.announce(role, epoch)`` and ``use(amqp_url, redis_url)`` change what the record says (endpoints
as peers must dial them, never with credentials); ``endpoints()`` is what the cluster's records offer.
``THATDAM_MDNS=off``, or no reachable interface, gives ``NoDiscovery``: the same methods, doing nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from thatdam_bus.config import Settings
from thatdam_bus.discovery.addresses import Address, advertised_endpoint, reachable_addresses
from thatdam_bus.discovery.records import Advert, Endpoints, endpoint_of

if TYPE_CHECKING:
    from thatdam_bus.discovery.advertiser import Advertiser
    from thatdam_bus.discovery.browser import PeerBrowser

log = logging.getLogger("thatdam_bus.discovery")


def package_version() -> str:
    try:
        return version("thatdam-bus")
    except PackageNotFoundError:
        return "0"


class NoDiscovery:
    """mDNS off: nothing advertised, nothing found."""

    addresses: Sequence[Address] = ()

    def endpoints(self) -> Endpoints | None:
        return None

    async def wait_for_endpoints(self, timeout: float) -> Endpoints | None:
        return None

    def announce(self, role: str, epoch: int) -> None:
        return None

    def use(self, amqp_url: object | None, redis_url: object | None) -> None:
        return None

    def __repr__(self) -> str:
        return "<NoDiscovery>"


class Discovery(NoDiscovery):
    """Advertises one record (after the first ``announce``) and, when browsing, follows the cluster's."""

    def __init__(self, base: Advert, addresses: Sequence[Address], advertiser: Advertiser,
                 browser: PeerBrowser | None) -> None:
        self.advert = base
        self.addresses = list(addresses)
        self.advertiser = advertiser
        self.browser = browser
        self._announced = False

    def endpoints(self) -> Endpoints | None:
        return None if self.browser is None else self.browser.endpoints()

    async def wait_for_endpoints(self, timeout: float) -> Endpoints | None:
        return None if self.browser is None else await self.browser.wait_for_endpoints(timeout)

    def announce(self, role: str, epoch: int) -> None:
        self._announced = True
        self._set(self.advert.with_(role=str(role), epoch=epoch))

    def use(self, amqp_url: object | None, redis_url: object | None) -> None:
        """The endpoints this process uses now (URLs or ``host:port``; ``None``: none, e.g. solo)."""
        amqp, redis = (None if url is None else advertised_endpoint(_endpoint(str(url)), self.addresses)
                       for url in (amqp_url, redis_url))
        self._set(self.advert.with_(amqp=amqp, redis=redis if amqp is not None else None))

    def _set(self, advert: Advert) -> None:
        self.advert = advert
        if self._announced:
            self.advertiser.set(advert)

    def __repr__(self) -> str:
        ips = ",".join(a.ip for a in self.addresses)
        return f"<Discovery {self.advert.instance_name} on {ips} role={self.advert.role} epoch={self.advert.epoch}>"


def _endpoint(text: str) -> str:
    return endpoint_of(text) if "://" in text else text


@asynccontextmanager
async def open_discovery(settings: Settings, node_id: str, *, role: str = "solo",
                         browse: bool = True) -> AsyncIterator[NoDiscovery]:
    """mDNS for the lifetime of the block: advertising (from the first ``announce``) and browsing; the record
    is withdrawn on the way out."""
    if not settings.mdns:
        log.info("mDNS off (THATDAM_MDNS): not advertising, not browsing")
        yield NoDiscovery()
        return
    addresses = reachable_addresses(settings.mdns_interfaces)
    if not addresses:
        log.warning("mDNS: no reachable interface (see THATDAM_MDNS_INTERFACES): not advertising, not browsing")
        yield NoDiscovery()
        return
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncZeroconf

    from thatdam_bus.discovery.advertiser import Advertiser
    from thatdam_bus.discovery.browser import PeerBrowser

    base = Advert(node_id=node_id, cluster=settings.cluster, role=role, version=package_version())
    zeroconf = AsyncZeroconf(interfaces=[a.ip for a in addresses], ip_version=IPVersion.V4Only)
    advertiser = Advertiser(zeroconf, addresses)
    browser = PeerBrowser(zeroconf, settings.cluster, own_name=base.instance_name) if browse else None
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(advertiser.run())]
            if browser is not None:
                tasks.append(group.create_task(browser.run()))
            try:
                yield Discovery(base, addresses, advertiser, browser)
            finally:
                for task in tasks:
                    task.cancel()
    finally:
        await zeroconf.async_close()
