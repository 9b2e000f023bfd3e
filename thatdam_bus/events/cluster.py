"""Leadership payloads (``cluster.leader.*``): every one carries the lease epoch, the fencing token."""

from __future__ import annotations

from pydantic import Field

from thatdam_bus.envelope import Payload
from thatdam_bus.events.fields import Epoch, NodeId, Reason


class LeaderElected(Payload):
    event_type = "thatdam.cluster.leader.elected.v1"
    node_id: NodeId
    epoch: Epoch
    ttl_ms: int = Field(gt=0, description="lease time-to-live")


class LeaderResigned(Payload):
    """The leader gave the lease up (shutdown) or stepped down because it could not renew in time."""

    event_type = "thatdam.cluster.leader.resigned.v1"
    node_id: NodeId
    epoch: Epoch
    reason: Reason


class LeaderLost(Payload):
    """Observed by another node: the lease of ``node_id`` at ``epoch`` expired without a resignation."""

    event_type = "thatdam.cluster.leader.lost.v1"
    node_id: NodeId
    epoch: Epoch
