"""The health figures a node reports in its heartbeat (and sets as gauges): dead letters in the last minute,
outbox depth, and the durable queues it consumes that the broker sees without any consumer.

The consumer check asks the broker (a passive declare per durable queue of this node, every
``CONSUMER_CHECK_S``): the failure it catches is the one the transport cannot see itself, a consumer the broker
dropped while the connection stayed up. Transports without ``consumer_counts`` (embedded) report nothing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from thatdam_bus.metrics.instruments import LEADER_EPOCH, OUTBOX_DEPTH, QUEUE_CONSUMERS, recent_dead_letters, set_role

log = logging.getLogger("thatdam_bus.metrics")
CONSUMER_CHECK_S = 10.0
ROLES = ("solo", "leader", "worker", "proxy")


class NodeHealth:
    """Collects the figures for one session's heartbeats."""

    def __init__(self, bus: Any) -> None:
        self.bus = bus
        self.empty_queues: list[str] = []

    def figures(self, role: str, epoch: int) -> dict[str, Any]:
        """The heartbeat's health fields; also refreshes the role, epoch and outbox gauges (once a beat)."""
        held = self.bus.outbox if getattr(self.bus, "outbox", None) is not None else getattr(self.bus, "journal", None)
        depth = len(held) if held is not None and hasattr(held, "__len__") else 0
        OUTBOX_DEPTH.set(depth)
        LEADER_EPOCH.set(epoch)
        set_role(str(role), ROLES)
        return {"dead_letters_1m": recent_dead_letters(), "outbox_depth": depth,
                "queues_without_consumers": self.empty_queues[:64]}

    async def watch_consumers(self, interval_s: float = CONSUMER_CHECK_S) -> None:
        """Until cancelled: ask the broker for the consumers of this node's durable queues."""
        counts_of = getattr(self.bus.transport, "consumer_counts", None)
        if counts_of is None:
            return
        while True:
            try:
                counts: dict[str, int] = await counts_of()
            except Exception as exc:
                log.debug("consumer check failed: %r", exc)
            else:
                for queue, count in counts.items():
                    QUEUE_CONSUMERS.labels(queue=queue).set(count)
                self.empty_queues = sorted(queue for queue, count in counts.items() if count == 0)
            await asyncio.sleep(interval_s)
