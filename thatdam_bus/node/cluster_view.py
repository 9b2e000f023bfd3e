"""Building the ``cluster.json`` view from a session's state (the file format lives in ``cluster_file``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from thatdam_bus.node.cluster_file import ClusterFile, LeaderInfo
from thatdam_bus.node.link import redact

if TYPE_CHECKING:
    from thatdam_bus.node.session import Session


def cluster_view(session: Session) -> ClusterFile | None:
    """What this node observes: its role, the leader it follows (``thatdam://<cluster>/<node_id>``), the
    endpoints it uses (without credentials), the fence epoch, and the members it tracks (leader and solo).

    None until the session knows a leader: the seeds' schema requires ``leader{url, advertised_via, last_seen}``
    and their entrypoints wait for a file that has one. Once known, the newest leader stays in the view even
    after it resigned (``last_seen`` says how old the news is) until the next one is elected."""
    settings = session.settings
    known = session.tracker.leader
    if known is None:
        return None
    leader = LeaderInfo(
        url=f"thatdam://{settings.cluster}/{known.node_id}",
        advertised_via="local" if session.link.solo else "redis-lease",
        last_seen=known.seen_at,
    )
    services = {"bus": "embedded" if session.link.solo else redact(settings.amqp_url)}
    if not session.link.solo and settings.redis_url is not None:
        services["lease"] = redact(settings.redis_url)
    return ClusterFile(
        node_id=session.node_id,
        role=session.role,
        leader=leader,
        services=services,
        epoch=session.fence.newest,
        members=sorted(session.view.members()),
    )
