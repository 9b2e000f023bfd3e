"""``PeerBrowser``: follows the ``_thatdam._tcp.local.`` records of one cluster and picks endpoints to adopt.

Any record of the cluster that carries endpoints will do: an ``infra`` record first (it describes the hosts
that run RabbitMQ and Redis), then the leader's, then the most recently seen. Once found, endpoints are kept
after their record goes away (a partitioned node keeps probing them until something newer is seen).

While nothing offers endpoints the browser *seeks*: it restarts its zeroconf browser, which queries again,
every 1 s, doubling up to ``SEEK_MAX_S``. Otherwise a node that came up before the infrastructure's network
link would wait for zeroconf's next refresh, which is far too late (zeroconf stops querying after 4 startup
queries when it knows no record).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from zeroconf import ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from thatdam_bus.discovery.records import INFRA_ROLE, SERVICE_TYPE, Advert, Endpoints

log = logging.getLogger("thatdam_bus.discovery")
RESOLVE_TIMEOUT_MS = 3000
SEEK_FIRST_S = 1.0
SEEK_MAX_S = 5.0


@dataclass(frozen=True)
class Sighting:
    advert: Advert
    at: float
    """``time.monotonic()`` when this version of the record was read."""


def preference(sighting: Sighting) -> tuple[bool, bool, float]:
    return sighting.advert.role == INFRA_ROLE, sighting.advert.role == "leader", sighting.at


class PeerBrowser:
    """The cluster's records by instance name; ``endpoints()`` is the pick (``None`` until one is seen)."""

    def __init__(self, zeroconf: AsyncZeroconf, cluster: str, own_name: str | None = None) -> None:
        self._zc = zeroconf
        self.cluster = cluster
        self._own = own_name.lower() if own_name else None
        self.records: dict[str, Sighting] = {}
        self._kept: Endpoints | None = None
        self._names: asyncio.Queue[str] = asyncio.Queue()
        self._found = asyncio.Event()

    def endpoints(self) -> Endpoints | None:
        offers = [s for s in self.records.values() if s.advert.endpoints is not None]
        chosen = max(offers, key=preference).advert.endpoints if offers else None
        if chosen is not None and chosen != self._kept:
            kept = self._kept
            if kept is None or (kept.amqp, kept.redis) != (chosen.amqp, chosen.redis):
                log.info("mDNS: adopting endpoints amqp=%s redis=%s from %s", chosen.amqp, chosen.redis,
                         chosen.origin)
            self._kept = chosen
        return self._kept

    async def wait_for_endpoints(self, timeout: float) -> Endpoints | None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._found.wait()
        return self.endpoints()

    async def run(self) -> None:
        """Browse and resolve until cancelled (a task of the owner's group)."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._seek())
            while True:
                name = await self._names.get()
                group.create_task(self._resolve(name))

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str,
                   state_change: ServiceStateChange) -> None:
        key = name.lower()
        if key == self._own:
            return
        if state_change is ServiceStateChange.Removed:
            gone = self.records.pop(key, None)
            if gone is not None:
                log.info("mDNS: %s (%s) withdrew its record", gone.advert.node_id, gone.advert.role)
            return
        self._names.put_nowait(name)

    async def _resolve(self, name: str) -> None:
        """Read one record (from zeroconf's cache, else by asking); a failure loses this sighting only."""
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        try:
            if not await info.async_request(self._zc.zeroconf, RESOLVE_TIMEOUT_MS):
                return
        except Exception as exc:
            log.debug("mDNS: could not resolve %s: %r", name, exc)
            return
        advert = Advert.from_properties(info.properties)
        if advert is None or advert.cluster != self.cluster:
            return
        self.records[name.lower()] = Sighting(advert, time.monotonic())
        if advert.endpoints is not None:
            self._found.set()
            self.endpoints()

    async def _seek(self) -> None:
        """Keep one zeroconf browser running; restart it (a fresh series of queries) while seeking."""
        delay = SEEK_FIRST_S
        while True:
            browser = AsyncServiceBrowser(self._zc.zeroconf, SERVICE_TYPE, handlers=[self._on_change])
            try:
                if self._found.is_set():
                    await asyncio.Event().wait()  # found: zeroconf's own refresh schedule suffices
                await asyncio.sleep(delay)
                delay = min(delay * 2, SEEK_MAX_S)
            finally:
                await browser.async_cancel()
