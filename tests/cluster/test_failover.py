"""Failover: SIGKILL of the leader (expiry) ten times over, then SIGTERM (release), with cluster.json watched
in a tight loop by another process through every transition."""

from __future__ import annotations

import signal
import statistics
from collections.abc import Callable
from typing import Any

import pytest

from tests.cluster.conftest import FileWatcher
from tests.cluster.harness import RENEW_S, TTL_S, Cluster, ClusterNode
from tests.cluster.terms import terms

pytestmark = pytest.mark.broker
Figure = Callable[[str, Any], None]
TRIALS = 10


async def replace_leader(cluster: Cluster, leader: ClusterNode, epoch: int, sig: int) -> tuple[float, int, str]:
    """Signal the leader; returns (seconds until the next leader announced itself, its epoch, its id)."""
    sent = leader.send(sig)
    elected = await cluster.elected(after_epoch=epoch, since=sent, timeout=TTL_S * 3)
    return elected.sent_at - sent, elected.data["epoch"], elected.data["node_id"]


async def test_leader_failover_on_sigkill_and_sigterm(cluster: Cluster, file_watch: FileWatcher,
                                                     figure: Figure) -> None:
    for _ in range(3):
        cluster.start()
    first = await cluster.elected()
    leader, epoch = cluster.by_id(first.data["node_id"]), first.data["epoch"]
    await cluster.settled(leader.node_id)
    delays = []
    for _ in range(TRIALS):
        delay, new_epoch, new_leader = await replace_leader(cluster, leader, epoch, signal.SIGKILL)
        assert new_epoch > epoch
        delays.append(delay)
        lost = await cluster.log.first("cluster.leader.lost", node_id=leader.node_id, epoch=epoch, timeout=2)
        assert lost.sender == new_leader
        leader, epoch = cluster.by_id(new_leader), new_epoch
        cluster.start()  # keep three
        await cluster.settled(leader.node_id)

    figure("sigkill_failover_p50_s", round(statistics.median(delays), 3))
    figure("sigkill_failover_max_s", round(max(delays), 3))
    figure("sigkill_failover_all_s", [round(d, 3) for d in delays])
    assert max(delays) < TTL_S + RENEW_S
    epochs = [term.epoch for term in terms(cluster.log.seen)]
    assert epochs == sorted(set(epochs)) and len(epochs) == TRIALS + 1

    delay, new_epoch, new_leader = await replace_leader(cluster, leader, epoch, signal.SIGTERM)
    figure("sigterm_failover_s", round(delay, 3))
    assert delay < 1.0
    assert new_epoch > epoch and new_leader != leader.node_id
    assert await leader.wait_exit() == 0
    resigned = cluster.log.of("cluster.leader.resigned", node_id=leader.node_id, epoch=epoch)
    assert resigned and resigned[0].at < terms(cluster.log.seen)[-1].start
    await cluster.settled(new_leader)

    report = file_watch.clean_report()
    promoted = [f for f in report["files"].values() if any(s[0] == "leader" for s in f["states"])]
    figure("cluster_json_reads", report["reads"])
    figure("cluster_json_states_seen", sum(len(f["states"]) for f in report["files"].values()))
    figure("cluster_json_leaders_seen_leading", f"{len(promoted)} of {TRIALS + 2}")
    assert len(report["files"]) == 3 + TRIALS
    assert report["files"][str(cluster.by_id(new_leader).state_dir / "cluster.json")]["states"][-1][0] == "leader"
    assert len(promoted) >= TRIALS // 2, "the reader saw most leaders' files name them leader"
