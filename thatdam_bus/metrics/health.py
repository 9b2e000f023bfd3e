"""The health figures a node reports in its heartbeat (and sets as gauges): dead letters in the last minute,
outbox depth, and the durable queues it consumes that the broker sees without any consumer.

Outbox depth is the backlog no broker has: a cluster session's outbox, or, on a solo node, the events a cluster
session held before the fall back. The solo journal's copies of events already delivered on the embedded broker
are not a backlog; they are ``thatdam_solo_journal_events``.

The consumer check asks the broker (a passive declare per durable queue of this node, every ``CHECK_S``): the
failure it catches is the one the transport cannot see itself, a consumer the broker dropped while the connection
stayed up. Transports without ``consumer_counts`` (embedded) report nothing. The ``thatdam_queue_consumers``
series are exactly the last answer's queues: a cancelled subscription's series goes, and a check that fails
removes them all (unknown is not 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from typing import Any

from thatdam_bus.metrics.instruments import (
    LEADER_EPOCH,
    OUTBOX_DEPTH,
    QUEUE_CONSUMERS,
    SOLO_JOURNAL_EVENTS,
    recent_dead_letters,
    set_role,
)

log = logging.getLogger("thatdam_bus.metrics")
CHECK_S = 10.0
ROLES = ("solo", "leader", "worker", "proxy")


class NodeHealth:
    """Collects the figures for one session's heartbeats."""

    def __init__(self, bus: Any) -> None:
        self.bus = bus
        self.empty_queues: list[str] = []
        """The last answer's queues without a consumer; kept when a check fails (the heartbeat cannot say
        "unknown", and the last word of the broker is the better guess)."""
        self.journal_backlog: int | None = None
        """Solo: events in the journal that no broker has (None until first counted)."""
        self._series: set[str] = set()

    def figures(self, role: str, epoch: int) -> dict[str, Any]:
        """The heartbeat's health fields; also refreshes the role, epoch and outbox gauges (once a beat)."""
        depth = self._backlog()
        if depth is not None:
            OUTBOX_DEPTH.set(depth)
        journal = getattr(self.bus, "journal", None)
        SOLO_JOURNAL_EVENTS.set(len(journal) if journal is not None else 0)
        LEADER_EPOCH.set(epoch)
        set_role(str(role), ROLES)
        return {"dead_letters_1m": recent_dead_letters(), "outbox_depth": depth,
                "queues_without_consumers": self.empty_queues[:64]}

    def _backlog(self) -> int | None:
        outbox = getattr(self.bus, "outbox", None)
        if outbox is not None:
            return len(outbox)
        return self.journal_backlog if getattr(self.bus, "journal", None) is not None else 0

    async def watch_consumers(self, interval_s: float = CHECK_S) -> None:
        """Until cancelled, every ``interval_s``: the figures that need a round trip, the broker's consumers of
        this node's durable queues and a solo journal's backlog. Its queue series go with it."""
        try:
            while True:
                await self._check_consumers()
                await self._count_journal_backlog()
                await asyncio.sleep(interval_s)
        finally:
            self._show({})

    async def _check_consumers(self) -> None:
        counts_of = getattr(self.bus.transport, "consumer_counts", None)
        if counts_of is None:
            return
        try:
            counts: dict[str, int] = await counts_of()
        except Exception as exc:
            log.debug("consumer check failed: %r", exc)
            self._show({})
            return
        self._show(counts)
        self.empty_queues = sorted(queue for queue, count in counts.items() if count == 0)

    def _show(self, counts: dict[str, int]) -> None:
        """Make the queue series exactly ``counts``."""
        for queue in self._series - counts.keys():
            with contextlib.suppress(KeyError):  # another node in this process (tests) shares the queue
                QUEUE_CONSUMERS.remove(queue)
        for queue, count in counts.items():
            QUEUE_CONSUMERS.labels(queue=queue).set(count)
        self._series = set(counts)

    async def _count_journal_backlog(self) -> None:
        journal = getattr(self.bus, "journal", None)
        if journal is None:
            return
        try:
            self.journal_backlog = await journal.undelivered()
        except sqlite3.Error as exc:
            log.debug("cannot count the solo journal's backlog: %r", exc)
            self.journal_backlog = None
