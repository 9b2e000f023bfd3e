"""What this process believes about leadership: the current leader, learned from the lease and from the bus.

Announcements older than the fence are ignored (logged): a paused or partitioned ex-leader may still speak, and
nobody may listen to it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from thatdam_bus.fencing import EpochFence

log = logging.getLogger("thatdam_bus.node.leadership")


@dataclass(frozen=True)
class KnownLeader:
    node_id: str
    epoch: int
    seen_at: datetime
    resigned: bool = False


class LeaderTracker:
    """The newest leader this node knows of, fenced by epoch."""

    def __init__(self, fence: EpochFence, on_change: Callable[[], None] = lambda: None) -> None:
        """``on_change`` runs after each change of the known leader (the session rewrites cluster.json)."""
        self.fence = fence
        self.leader: KnownLeader | None = None
        self._on_change = on_change

    def elected(self, node_id: str, epoch: int) -> bool:
        """Record a leader; False (and a log line) when the announcement is stale."""
        if self.fence.is_stale(epoch):
            log.warning("ignored stale leader announcement: %s at epoch %d < %d", node_id, epoch, self.fence.newest)
            return False
        self.fence.observe(epoch)
        if self.leader is None or epoch > self.leader.epoch or self.leader.node_id != node_id:
            self.leader = KnownLeader(node_id, epoch, datetime.now(UTC))
            self._on_change()
        return True

    def resigned(self, node_id: str, epoch: int) -> bool:
        if self.fence.is_stale(epoch):
            log.warning("ignored stale resignation: %s at epoch %d < %d", node_id, epoch, self.fence.newest)
            return False
        if self.leader is not None and self.leader.node_id == node_id and self.leader.epoch == epoch:
            self.leader = KnownLeader(node_id, epoch, self.leader.seen_at, resigned=True)
            self._on_change()
        return True

    def predecessor_lost(self, new_epoch: int) -> KnownLeader | None:
        """The previous leader if it never resigned: the new leader reports it ``cluster.leader.lost``."""
        old = self.leader
        if old is not None and old.epoch < new_epoch and not old.resigned:
            return old
        return None

    def __repr__(self) -> str:
        return f"<LeaderTracker leader={self.leader} fence={self.fence.newest}>"
