"""The services every node runs as part of the runtime (not optional handler modules).

- ``leadership``: every node follows ``cluster.leader.*`` to keep its fence and its idea of the leader current.
- ``membership``: the leader (and a solo node) folds heartbeats into the registry view; workers do not bind
  heartbeats at all (architecture section 9: N nodes would cost the broker N^2 deliveries per second). A
  heartbeat stamped with an older epoch than the leader's comes from a node that missed the ``elected``
  announcement (it started after it, or never contends for the lease); the leader tells it again.
- ``recorder`` (``thatdam_bus.recorder.service``): the leader declares the flight recorder stream; a solo node
  keeps the ring of segment files.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from thatdam_bus.context import HandlerContext
from thatdam_bus.envelope import Envelope
from thatdam_bus.events.cluster import LeaderElected, LeaderLost, LeaderResigned
from thatdam_bus.events.node import NodeHeartbeat, NodeLeft, Role
from thatdam_bus.membership import MembershipView
from thatdam_bus.node.leadership import LeaderTracker
from thatdam_bus.recorder.service import recorder
from thatdam_bus.service import Service
from thatdam_bus.topics import LEADER_ELECTED, LEADER_LOST, LEADER_RESIGNED, Patterns

leadership = Service("leadership", description="Follows leader announcements, fenced by epoch.")
membership = Service(
    "membership", roles={Role.LEADER, Role.SOLO}, description="Folds heartbeats into the registry view."
)


@leadership.on(LEADER_ELECTED)
async def leader_elected(event: Envelope[LeaderElected], ctx: HandlerContext) -> None:
    """Adopt the new leader unless its epoch is older than one already seen."""
    tracker: LeaderTracker = ctx.state
    tracker.elected(event.data.node_id, event.data.epoch)


@leadership.on(LEADER_RESIGNED)
async def leader_resigned(event: Envelope[LeaderResigned], ctx: HandlerContext) -> None:
    """Remember the resignation so the next leader does not report the old one as lost."""
    tracker: LeaderTracker = ctx.state
    tracker.resigned(event.data.node_id, event.data.epoch)


@leadership.on(LEADER_LOST)
async def leader_lost(event: Envelope[LeaderLost], ctx: HandlerContext) -> None:
    """Only raises the fence: the lost leader's epoch is already older than the reporter's."""
    tracker: LeaderTracker = ctx.state
    tracker.fence.observe(event.epoch)


async def _nothing(_epoch: int) -> None:
    return None


@dataclass
class Registry:
    """The membership service's state: the view, and how to bring a node behind the current epoch up to date
    (the session re-announces its term when it leads)."""

    view: MembershipView
    catch_up: Callable[[int], Awaitable[None]] = _nothing


@membership.on(Patterns.HEARTBEATS)
async def track_heartbeat(event: Envelope[NodeHeartbeat], ctx: HandlerContext) -> None:
    """Record the sender as alive; log a node seen for the first time; answer a lagging epoch."""
    registry: Registry = ctx.state
    if registry.view.observe(event.data):
        ctx.log.info("node %s (%s) is alive as %s", event.data.node_id, event.data.hostname, event.data.role)
    await registry.catch_up(event.data.epoch)


@membership.on(Patterns.NODES_LEFT)
async def forget_leaver(event: Envelope[NodeLeft], ctx: HandlerContext) -> None:
    """A node that said goodbye is removed at once rather than timed out."""
    registry: Registry = ctx.state
    registry.view.forget(event.data.node_id)
    ctx.log.info("node %s left: %s", event.data.node_id, event.data.reason)


CORE_SERVICES = (leadership, membership, recorder)
