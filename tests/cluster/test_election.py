"""Three real nodes: one leader, two workers, quickly; a killed worker is reported lost; SIGTERM leaves nothing."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.cluster.harness import HEARTBEAT_S, Cluster, ClusterNode
from tests.cluster.terms import terms
from tests.support import wait_until

pytestmark = pytest.mark.broker
Figure = Callable[[str, Any], None]


async def three_nodes(cluster: Cluster) -> tuple[ClusterNode, list[ClusterNode]]:
    """Start three nodes together; returns the leader and the workers once every cluster.json agrees."""
    nodes = [cluster.start() for _ in range(3)]
    elected = await cluster.elected()
    await cluster.settled(elected.data["node_id"])
    leader = cluster.by_id(elected.data["node_id"])
    return leader, [n for n in nodes if n is not leader]


async def test_three_nodes_elect_exactly_one_leader_within_two_seconds(cluster: Cluster, figure: Figure) -> None:
    """Measured on the nodes' own stamps (the elected envelope's time, the cluster.json mtimes), from the last
    node's start: its runtime's first log line. The figures from the last process spawn also count interpreter
    start-up and imports, which on a loaded two-core box alone can take over a second."""
    nodes = [cluster.start() for _ in range(3)]
    spawned = time.monotonic()
    elected = await cluster.elected()
    leader = elected.data["node_id"]
    await cluster.settled(leader)
    agreed_at = max(node.cluster_file_written_at() for node in nodes)
    started = max(node.first_logged_at() for node in nodes)
    figure("elected_after_last_node_start_s", round(elected.sent_at - started, 3))
    figure("cluster_json_agreed_after_last_node_start_s", round(agreed_at - started, 3))
    figure("elected_after_last_spawn_s", round(elected.sent_at - spawned, 3))
    figure("cluster_json_agreed_after_last_spawn_s", round(agreed_at - spawned, 3))
    assert elected.sent_at - started < 2.0
    assert agreed_at - started < 2.0
    assert sorted(str(n.role()) for n in nodes) == ["leader", "worker", "worker"]
    for node in nodes:  # the bus agrees with the files: each node heartbeats the role its file shows
        await cluster.log.first(f"node.{node.node_id}.heartbeat", since=elected.at, role=node.role())
    assert [(t.node_id, t.epoch) for t in terms(cluster.log.seen)] == [(leader, 1)]
    assert [s.data["role"] for s in cluster.log.of("node.*.role")] == ["leader"]


async def test_a_killed_worker_is_reported_lost_by_the_leader(cluster: Cluster, figure: Figure) -> None:
    leader, workers = await three_nodes(cluster)

    def tracks_everyone() -> bool:
        view = leader.cluster_file()
        return view is not None and len(view.members) == 3
    await wait_until(tracks_everyone, 5, "the leader to track three members")
    victim = workers[0]
    killed_at = victim.send(signal.SIGKILL)
    lost = await cluster.log.first(f"node.{victim.node_id}.lost", since=killed_at, timeout=5)
    last_beat = cluster.log.of(f"node.{victim.node_id}.heartbeat")[-1]
    figure("lost_after_sigkill_s", round(lost.sent_at - killed_at, 3))
    figure("lost_after_last_heartbeat_s", round(lost.sent_at - last_beat.sent_at, 3))
    assert lost.sent_at - killed_at < 3 * HEARTBEAT_S + 1.0
    assert lost.sender == leader.node_id
    assert lost.data["missed_heartbeats"] >= 3
    assert cluster.log.of("node.*.lost") == [lost], "only the killed worker is lost, and only once"


async def test_sigterm_of_every_node_exits_cleanly_and_leaves_no_lease(cluster: Cluster) -> None:
    leader, workers = await three_nodes(cluster)
    assert await cluster.leader_key() == f"{leader.node_id}:1"
    nodes = [leader, *workers]
    for node in nodes:
        node.send(signal.SIGTERM)
    assert [await node.wait_exit() for node in nodes] == [0, 0, 0]
    assert await cluster.leader_key() is None
    for node in nodes:
        assert "Traceback" not in node.log()
        assert f"node {node.node_id} stopped" in node.log()
        await cluster.log.first(f"node.{node.node_id}.left", timeout=2)
    await cluster.log.first("cluster.leader.resigned", node_id=leader.node_id, timeout=2)
