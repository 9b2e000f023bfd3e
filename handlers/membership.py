"""The membership view: every heartbeat and goodbye on the bus, folded into a ``MembershipView``.

Runs on the leader and on solo nodes only: workers do not bind every heartbeat (architecture section 9).
"""

from __future__ import annotations

from thatdam_bus import Envelope, HandlerContext, MembershipView, NodeHeartbeat, NodeLeft, Patterns, Role, Service

service = Service(
    "membership",
    roles={Role.LEADER, Role.SOLO},
    description="Folds heartbeats into the cluster membership view.",
    state=MembershipView,
)


@service.on(Patterns.HEARTBEATS)
async def track_heartbeat(event: Envelope[NodeHeartbeat], ctx: HandlerContext) -> None:
    """Record the sender as alive; log a node seen for the first time."""
    view: MembershipView = ctx.state
    if view.observe(event.data):
        ctx.log.info("node %s (%s) is alive as %s", event.data.node_id, event.data.hostname, event.data.role)


@service.on(Patterns.NODES_LEFT)
async def forget_leaver(event: Envelope[NodeLeft], ctx: HandlerContext) -> None:
    """A node that said goodbye is removed at once rather than timed out."""
    view: MembershipView = ctx.state
    view.forget(event.data.node_id)
    ctx.log.info("node %s left: %s", event.data.node_id, event.data.reason)
