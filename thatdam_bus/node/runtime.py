"""``Node``: one process of the cluster. Owns its transport, its handlers and every task it starts.

Lifecycle: pick a transport (RabbitMQ if set and reachable, else the embedded broker with a local socket),
subscribe the handlers of the current role, heartbeat until asked to stop, then say goodbye (``node.<id>.left``),
cancel subscriptions and close the transport. Leadership and role changes arrive with the lease (a later layer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from thatdam_bus import topics
from thatdam_bus.config import Settings
from thatdam_bus.events.node import NodeJoined, NodeLeft, Role
from thatdam_bus.node.heartbeat import HeartbeatSource
from thatdam_bus.node.identity import load_or_create_node_id
from thatdam_bus.node.services import HandlerHost, load_services
from thatdam_bus.publisher import Bus
from thatdam_bus.service import Service
from thatdam_bus.transports import connect_node_transport
from thatdam_bus.transports.base import Transport

log = logging.getLogger("thatdam_bus.node")
GOODBYE_TIMEOUT_S = 2.0


class Node:
    """A running node. ``run()`` returns after ``stop()`` (or SIGINT/SIGTERM) once everything is closed."""

    def __init__(self, settings: Settings, services: list[Service] | None = None) -> None:
        self.settings = settings
        self.node_id = load_or_create_node_id(settings.state_dir)
        self.services = services if services is not None else load_services(settings.services)
        self.role = Role.SOLO
        self.epoch = 0
        self.transport: Transport | None = None
        self.host: HandlerHost | None = None
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._heartbeats = HeartbeatSource(
            self.node_id,
            services=[s.name for s in self.services],
            devices=[],
            interval_s=settings.heartbeat_interval,
        )

    def stop(self) -> None:
        """Ask the node to shut down cleanly; safe to call from a signal handler."""
        self._stop.set()

    async def run(self) -> None:
        transport = await connect_node_transport(self.settings)
        self.transport = transport
        try:
            bus = Bus(transport, cluster=self.settings.cluster, node_id=self.node_id, epoch=lambda: self.epoch)
            self.host = HandlerHost(bus, self.services, self.settings.max_message_bytes)
            await self.host.apply_role(self.role)
            await self._announce_join(bus)
            log.info("node %s up as %s on %r, running %s", self.node_id, self.role, transport, self.host.running)
            async with asyncio.TaskGroup() as group:
                beating = group.create_task(self._heartbeat_loop(bus))
                self.ready.set()
                await self._stop.wait()
                beating.cancel()
            await self._say_goodbye(bus)
            await self.host.stop_all()
        finally:
            await transport.aclose()
            log.info("node %s stopped", self.node_id)

    async def _announce_join(self, bus: Bus) -> None:
        joined = NodeJoined(node_id=self.node_id, hostname=self._heartbeats.hostname, role=self.role)
        await bus.publish(joined, topics.node_membership(self.node_id, "joined"))

    async def _heartbeat_loop(self, bus: Bus) -> None:
        """Beat every interval. A failed beat is logged and skipped: heartbeats may be lost, the loop may not."""
        key = topics.node_heartbeat(self.node_id)
        interval = self.settings.heartbeat_interval
        while True:
            try:
                await bus.publish(self._heartbeats.beat(self.role, self.epoch), key)
            except Exception as exc:  # keep beating through broker trouble
                log.warning("heartbeat not sent: %r", exc)
            await asyncio.sleep(interval)

    async def _say_goodbye(self, bus: Bus) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(GOODBYE_TIMEOUT_S):
                await bus.publish(NodeLeft(node_id=self.node_id), topics.node_membership(self.node_id, "left"))

    def __repr__(self) -> str:
        return f"<Node {self.node_id} role={self.role} epoch={self.epoch} transport={self.transport!r}>"


def install_signal_handlers(node: Node) -> None:
    """SIGINT/SIGTERM stop the node cleanly (no traceback, no orphan tasks)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, node.stop)
