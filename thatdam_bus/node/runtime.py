"""``Node``: one process of the cluster. Owns its link (broker + lease), its handlers and every task it starts.

The node runs one *session* per link. A session subscribes the handlers of the current role, keeps the lease,
heartbeats, and (as leader or solo) watches membership, until the node is stopped or the link should change:
a solo node that finds RabbitMQ and Redis ends its session and starts a cluster one, in the same process, after
forwarding the durable events it produced alone; a cluster node whose broker stays away falls back to solo.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from thatdam_bus import topics
from thatdam_bus.config import Settings
from thatdam_bus.discovery.service import NoDiscovery, open_discovery
from thatdam_bus.events.node import NodeJoined, NodeLeft, Role
from thatdam_bus.node.cluster_file import remove_cluster_file
from thatdam_bus.node.heartbeat import HeartbeatSource
from thatdam_bus.node.identity import load_or_create_node_id
from thatdam_bus.node.journal import SoloJournal
from thatdam_bus.node.link import Link, link_settings, solo_link, try_cluster_link
from thatdam_bus.node.services import load_services
from thatdam_bus.node.session import Session
from thatdam_bus.security.verifier import intent_verifier
from thatdam_bus.service import Service

log = logging.getLogger("thatdam_bus.node")
GOODBYE_TIMEOUT_S = 2.0
DISCOVERY_GRACE_S = 1.5
"""With no endpoint configured, how long a starting node listens to mDNS before it settles for solo."""


class Node:
    """A running node. ``run()`` returns after ``stop()`` (or SIGINT/SIGTERM) once everything is closed."""

    def __init__(self, settings: Settings, services: list[Service] | None = None) -> None:
        self.settings = settings
        self.node_id = load_or_create_node_id(settings.state_dir)
        self.services = services if services is not None else load_services(settings.services)
        self.journal = SoloJournal(settings.state_dir, settings.outbox_max_events, settings.outbox_max_bytes)
        self.verifier = intent_verifier(settings)
        self.session: Session | None = None
        self.discovery = NoDiscovery()
        self._stop = asyncio.Event()
        self._retiring: set[asyncio.Task[None]] = set()
        self._heartbeats = HeartbeatSource(
            self.node_id,
            services=[s.name for s in self.services],
            devices=[entry.split("=", 1)[0] for entry in settings.sources],
            interval_s=settings.heartbeat_interval,
        )

    @property
    def role(self) -> Role | None:
        return self.session.role if self.session is not None else None

    def stop(self) -> None:
        """Ask the node to shut down cleanly; safe to call from a signal handler."""
        self._stop.set()

    async def run(self) -> None:
        """Run sessions until stopped: cluster when the infrastructure is reachable, else solo."""
        remove_cluster_file(self.settings.state_dir)
        try:
            async with open_discovery(self.settings, self.node_id) as self.discovery:
                if self.settings.amqp_url is None:
                    await self.discovery.wait_for_endpoints(DISCOVERY_GRACE_S)
                lost = False
                while not self._stop.is_set():
                    link = await self._solo_link() if lost else await self._open_link()
                    try:
                        reason = await self._run_session(link)
                    finally:
                        lost = link.abandoned
                        if lost:
                            self._retire_alongside(link)
                        else:
                            await link.aclose()
                    log.info("session ended: %s", reason)
        finally:
            if self._retiring:
                await asyncio.wait(self._retiring)  # each is bounded by its link's own deadlines
            log.info("node %s stopped", self.node_id)

    def _retire_alongside(self, link: Link) -> None:
        """Close an abandoned link while the next session runs: its deadlines must not delay solo. The node
        owns the task (``_retiring``) and waits for it before ``run`` returns. Not a ``TaskGroup``: one would
        wrap every error of ``run`` in an ``ExceptionGroup``, which callers (the CLI) do not expect."""
        task = asyncio.create_task(_retire(link), name="thatdam-retire-link")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def link_settings(self) -> Settings:
        """Explicit environment > mDNS > CLOUD_CONTROL_URL (``link.link_settings``), asked afresh each time."""
        return link_settings(self.settings, self.discovery.endpoints())

    async def _open_link(self) -> Link:
        settings = self.link_settings()
        link = await try_cluster_link(settings, self.node_id)
        self.discovery.use(*((None, None) if link is None else (settings.amqp_url, settings.redis_url)))
        if link is None:
            return await solo_link(settings, self.node_id)
        forwarded = await self.journal.replay(link.transport)
        if forwarded:
            log.info("joined the cluster with %d durable events from solo time", forwarded)
        return link

    async def _solo_link(self) -> Link:
        """Straight to solo after the infrastructure was lost (probing it again now would only time out);
        the solo session keeps probing and joins again by itself."""
        self.discovery.use(None, None)
        return await solo_link(self.link_settings(), self.node_id)

    async def _run_session(self, link: Link) -> str:
        session = Session(link.settings, self.node_id, link, self.services, self._heartbeats,
                          journal=self.journal if link.solo else None, verifier=self.verifier,
                          probe=self.link_settings, on_state=self.discovery.announce)
        self.session = session
        await session.start()
        await session.bus.publish(
            NodeJoined(node_id=self.node_id, hostname=self._heartbeats.hostname, role=session.role),
            topics.node_membership(self.node_id, "joined"),
        )
        log.info("node %s up as %s on %r", self.node_id, session.role, link.transport)
        reason = await session.run_until(self._stop)
        if self._stop.is_set():
            await self._say_goodbye(session)
        await session.close()
        return reason

    async def _say_goodbye(self, session: Session) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(GOODBYE_TIMEOUT_S):
                await session.bus.publish(NodeLeft(node_id=self.node_id),
                                          topics.node_membership(self.node_id, "left"))

    def __repr__(self) -> str:
        return f"<Node {self.node_id} session={self.session!r}>"


async def _retire(link: Link) -> None:
    """Close an abandoned link; whatever its dead connection raises is logged, never fatal to the node."""
    try:
        await link.aclose()
    except Exception as exc:
        log.info("closing the abandoned link ended in %r", exc)


def install_signal_handlers(node: Node) -> None:
    """SIGINT/SIGTERM stop the node cleanly (no traceback, no orphan tasks)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, node.stop)
