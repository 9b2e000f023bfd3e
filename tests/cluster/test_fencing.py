"""Leader announcements stamped with an epoch older than the fence are ignored by every node."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.cluster.harness import Cluster
from tests.cluster.terms import terms
from thatdam_bus.node.cluster_file import ClusterFile, LeaderInfo

pytestmark = pytest.mark.broker
EPOCH_BASE = 40
"""The cluster's epoch counter starts here, so the first leader's epoch (41) leaves room for older ones."""


def by_hand(kind: str, data: dict[str, Any], epoch: int, sender: str) -> dict[str, Any]:
    """A ``cluster.leader.<kind>`` envelope written out field by field, as a foreign publisher would."""
    return {
        "specversion": "1.0", "id": uuid.uuid4().hex, "type": f"thatdam.cluster.leader.{kind}.v1",
        "source": f"thatdam://default/{sender}/node", "time": datetime.now(UTC).isoformat(),
        "datacontenttype": "application/json", "data": data, "epoch": epoch, "seq": 1,
    }


def leadership_view(view: ClusterFile | None) -> tuple[str, LeaderInfo, int]:
    assert view is not None and view.leader is not None
    return view.role, view.leader, view.epoch


async def test_stale_leader_announcements_are_ignored_by_every_node(cluster: Cluster) -> None:
    await cluster.redis.set(f"{cluster.prefix}:default:epoch", EPOCH_BASE)
    nodes = [cluster.start() for _ in range(3)]
    elected = await cluster.elected()
    leader, epoch = elected.data["node_id"], elected.data["epoch"]
    assert epoch == EPOCH_BASE + 1
    await cluster.settled(leader)
    before = {node.node_id: leadership_view(node.cluster_file()) for node in nodes}

    stale = EPOCH_BASE - 33
    await cluster.log.publish("cluster.leader.elected", by_hand(
        "elected", {"node_id": "impostor", "epoch": stale, "ttl_ms": 2000}, stale, "impostor"))
    await cluster.log.publish("cluster.leader.resigned", by_hand(
        "resigned", {"node_id": leader, "epoch": EPOCH_BASE, "reason": "forged"}, EPOCH_BASE, "impostor"))
    for node in nodes:
        await node.wait_log(f"ignored stale leader announcement: impostor at epoch {stale} < {epoch}")
        await node.wait_log(f"ignored stale resignation: {leader} at epoch {EPOCH_BASE} < {epoch}")

    for node in nodes:
        assert leadership_view(node.cluster_file()) == before[node.node_id], "cluster.json must not change"
        assert before[node.node_id][1].url.endswith(f"/{leader}") and before[node.node_id][2] == epoch
    assert [(t.node_id, t.epoch) for t in terms(cluster.log.seen) if t.node_id != "impostor"] == [(leader, epoch)]
