"""Node liveness and membership payloads (``node.<id>.*`` channels)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from thatdam_bus.envelope import Payload
from thatdam_bus.events.fields import Epoch, NodeId, ShortText


class Role(StrEnum):
    """What a node does in the cluster (architecture section 5)."""

    SOLO = "solo"
    LEADER = "leader"
    WORKER = "worker"
    PROXY = "proxy"


class Capabilities(BaseModel):
    """What a node can do: its capture devices and the services (handler sets) it runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    devices: Annotated[list[ShortText], Field(max_length=64)] = []
    services: Annotated[list[ShortText], Field(max_length=64)] = []


class NodeHeartbeat(Payload):
    """Published every heartbeat interval; membership is derived from these, not from a registry server."""

    event_type = "thatdam.node.heartbeat.v1"
    node_id: NodeId
    hostname: ShortText
    role: Role
    epoch: Epoch
    capabilities: Capabilities = Capabilities()
    version: ShortText
    uptime_s: float = Field(ge=0)
    load: float = Field(ge=0, description="1-minute load average")
    interval_s: float = Field(gt=0, description="the sender's heartbeat interval, for liveness timeouts")
    dead_letters_1m: int | None = Field(default=None, ge=0, description="messages its handlers dead-lettered in "
                                        "the last minute")
    outbox_depth: int | None = Field(default=None, ge=0, description="durable events no broker has yet (its "
                                     "outbox; solo: events held before it fell back)")
    queues_without_consumers: Annotated[list[ShortText], Field(max_length=64)] = Field(
        default=[], description="durable queues it consumes that the broker reports without any consumer")


class NodeJoined(Payload):
    event_type = "thatdam.node.joined.v1"
    node_id: NodeId
    hostname: ShortText
    role: Role


class NodeLeft(Payload):
    """Graceful shutdown: the node says goodbye before it goes."""

    event_type = "thatdam.node.left.v1"
    node_id: NodeId
    reason: ShortText = "shutdown"


class NodeLost(Payload):
    """Published by the leader when a node missed too many heartbeats."""

    event_type = "thatdam.node.lost.v1"
    node_id: NodeId
    last_seen: datetime
    missed_heartbeats: int = Field(ge=0)


class NodeRoleChanged(Payload):
    event_type = "thatdam.node.role.v1"
    node_id: NodeId
    role: Role
    previous_role: Role | None = None
    epoch: Epoch
