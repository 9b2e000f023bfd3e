"""A view of cluster membership built only from heartbeats (no registry server), with an injected clock."""

from __future__ import annotations

import time
from dataclasses import dataclass

from thatdam_bus.events.node import NodeHeartbeat
from thatdam_bus.types import Clock

MISSED_HEARTBEATS_LOST = 3


@dataclass
class Member:
    heartbeat: NodeHeartbeat
    last_seen: float


class MembershipView:
    """Who is alive, by last heartbeat. A node is lost after ``MISSED_HEARTBEATS_LOST`` of its own intervals."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._members: dict[str, Member] = {}

    def observe(self, heartbeat: NodeHeartbeat) -> bool:
        """Record a heartbeat; True when the node was not known before (it joined)."""
        joined = heartbeat.node_id not in self._members
        self._members[heartbeat.node_id] = Member(heartbeat, self._clock())
        return joined

    def forget(self, node_id: str) -> None:
        self._members.pop(node_id, None)

    def lost(self) -> list[Member]:
        """Members whose last heartbeat is older than their allowance."""
        now = self._clock()
        return [
            m for m in self._members.values()
            if now - m.last_seen > MISSED_HEARTBEATS_LOST * m.heartbeat.interval_s
        ]

    def members(self) -> dict[str, Member]:
        return dict(self._members)

    def __len__(self) -> int:
        return len(self._members)

    def __repr__(self) -> str:
        return f"<MembershipView members={sorted(self._members)}>"
