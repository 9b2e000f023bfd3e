"""A real partition: the leader's host is unplugged from the network (its switch port goes down).

The remaining hosts elect a new leader at a higher epoch within ttl + renew period; the old leader steps down
and is solo before its lease could have expired (the Redis key's own expiry, sampled with PTTL from the root
namespace, is the reference: the node sees its lease backend fail, finds the broker gone too, and gives the
link up at once); plugged in again it rejoins as a worker, by itself. No two nodes lead
in the same epoch, nor at the same time: checked on each host's node log here and on the event log at teardown.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from tests.cluster.harness import RENEW_S, TTL_S
from tests.lease_watch import key_expiry
from tests.multihost.harness import LoggedTerm, MultiHostCluster, leadership_terms, wait_line
from tests.support import wait_until

pytestmark = pytest.mark.broker
Figure = Callable[[str, Any], None]




def overlapping(terms: list[LoggedTerm]) -> list[str]:
    """Pairs of terms of different nodes that overlap in time (an open term runs to the end of the test)."""
    problems = []
    for a, b in itertools.combinations(terms, 2):
        a_end, b_end = a.end or float("inf"), b.end or float("inf")
        if a.node_id != b.node_id and a.start < b_end and b.start < a_end:
            problems.append(f"{a} overlaps {b}")
    return problems


async def test_partitioned_leader_steps_down_and_rejoins_as_worker(bed: MultiHostCluster, figure: Figure) -> None:
    await bed.start_infra()
    for n in (1, 2, 3):
        bed.start_on(f"h{n}")
    elected = await bed.elected(timeout=15)
    epoch = elected.data["epoch"]
    leader = bed.by_id(elected.data["node_id"])
    await bed.settled(leader.node_id)

    leader_key = f"{bed.prefix}:{bed.cluster_name}:leader"
    async with key_expiry(bed.redis, leader_key, f"{leader.node_id}:{epoch}") as expiries:
        await wait_until(lambda: len(expiries) > 5, 3, "PTTL samples of the leader key")
        cut_at = bed.net.unplug(bed.host_of(leader))
        successor = await bed.elected(after_epoch=epoch, since=cut_at, timeout=TTL_S * 3)
    expires_at = min(expiry for taken, expiry in expiries if taken > cut_at + 0.05)  # no renew lands after
    stepped = await wait_line(leader, f"stepped down at epoch {epoch}", since=cut_at, timeout=TTL_S * 2)
    figure("new_leader_elected_after_cut_s", round(successor.sent_at - cut_at, 3))
    figure("old_leader_stepped_down_before_key_expiry_s", round(expires_at - stepped.at, 3))
    assert successor.data["node_id"] != leader.node_id and successor.data["epoch"] > epoch
    assert successor.sent_at - cut_at <= TTL_S + RENEW_S
    assert stepped.at < expires_at, "the old leader acted on a lease that may have expired"

    solo = await wait_line(leader, f"node {leader.node_id} up as solo", since=cut_at, timeout=30)
    figure("old_leader_solo_after_cut_s", round(solo.at - cut_at, 3))
    figure("old_leader_solo_before_key_expiry_s", round(expires_at - solo.at, 3))
    assert solo.at < expires_at, "the old leader reached solo only after its lease could have expired"

    healed_at = bed.net.plug(bed.host_of(leader))
    rejoined = await bed.log.first(f"node.{leader.node_id}.joined", since=healed_at, timeout=20, role="worker")
    figure("old_leader_rejoined_as_worker_after_heal_s", round(rejoined.sent_at - healed_at, 3))
    await bed.settled(successor.data["node_id"])
    assert leader.alive

    terms = [term for node in bed.nodes for term in leadership_terms(node.node_id, node.log())]
    figure("terms_in_node_logs", [(t.node_id[:2], t.epoch) for t in terms])
    leaders_by_epoch = {e: {t.node_id for t in terms if t.epoch == e} for e in {t.epoch for t in terms}}
    assert all(len(nodes) == 1 for nodes in leaders_by_epoch.values()), leaders_by_epoch
    assert overlapping(terms) == []
    assert {(t.node_id, t.epoch) for t in terms} >= {(leader.node_id, epoch),
                                                     (successor.data["node_id"], successor.data["epoch"])}
