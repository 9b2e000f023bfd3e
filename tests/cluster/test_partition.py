"""A leader that loses Redis, and a leader that is paused past its ttl: neither acts as leader once another may.

Each node reaches Redis through its own proxy, so one node's Redis can be cut while the others keep theirs. The
Redis key's own expiry (sampled with PTTL by the test) is the reference for "before its ttl has run out".
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.cluster.conftest import FileWatcher
from tests.cluster.harness import TTL_S, Cluster, ClusterNode
from tests.cluster.terms import claims_leadership
from tests.lease_watch import key_expiry
from tests.support import wait_until
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.broker
Figure = Callable[[str, Any], None]
REDIS_PORT = 6379


async def proxied_trio(cluster: Cluster) -> tuple[dict[str, TcpProxy], ClusterNode, int]:
    """Three nodes, each with its own Redis proxy, the third pinned worker (it never contends); returns the
    proxies by node id, the leader and its epoch."""
    proxies = {}
    for pin in ("auto", "auto", "worker"):
        proxy = await cluster.proxy(REDIS_PORT)
        node = cluster.start(THATDAM_REDIS_URL=proxy.url(), THATDAM_ROLE=pin)
        proxies[node.node_id] = proxy
    elected = await cluster.elected()
    await cluster.settled(elected.data["node_id"])
    return proxies, cluster.by_id(elected.data["node_id"]), elected.data["epoch"]




async def test_leader_cut_from_redis_resigns_before_its_lease_expires(cluster: Cluster, file_watch: FileWatcher,
                                                                     figure: Figure) -> None:
    proxies, leader, epoch = await proxied_trio(cluster)
    async with key_expiry(cluster.redis, f"{cluster.prefix}:default:leader", f"{leader.node_id}:{epoch}") as expiries:
        await wait_until(lambda: len(expiries) > 5, 2, "PTTL samples")
        cut_at = time.monotonic()
        proxies[leader.node_id].cut()
        resigned = await cluster.log.first("cluster.leader.resigned", since=cut_at, timeout=TTL_S * 2,
                                           node_id=leader.node_id, epoch=epoch)
        successor = await cluster.elected(after_epoch=epoch, since=cut_at, timeout=TTL_S * 2)
    expires_at = min(expiry for taken, expiry in expiries if taken > cut_at + 0.05)  # no renew lands after
    last_renew = expires_at - TTL_S
    figure("resigned_after_last_renew_s", round(resigned.sent_at - last_renew, 3))
    figure("resigned_before_key_expiry_s", round(expires_at - resigned.sent_at, 3))
    figure("resigned_received_before_key_expiry_s", round(expires_at - resigned.at, 3))
    figure("successor_elected_after_key_expiry_s", round(successor.sent_at - expires_at, 3))
    assert resigned.sent_at < expires_at, "the leader must step down before its lease can be granted elsewhere"
    assert resigned.at < successor.at, "everyone hears the resignation before the next election"
    assert successor.sent_at <= expires_at + TTL_S
    assert cluster.log.of("cluster.leader.lost") == [], "it resigned in time: nobody had to report it lost"
    await leader.wait_log(f"stepped down at epoch {epoch}")

    proxies[leader.node_id].heal()  # back on Redis, it follows the new leader
    await cluster.settled(successor.data["node_id"])
    assert leader.alive and leader.role() == "worker"

    # Elected again (the only other contender dies), it judges liveness from fresh heartbeats only: the
    # members it tracked in its first term are not reported lost for the silence in between.
    killed_at = cluster.by_id(successor.data["node_id"]).send(signal.SIGKILL)
    again = await cluster.elected(after_epoch=successor.data["epoch"], since=killed_at, timeout=TTL_S * 3)
    assert again.data["node_id"] == leader.node_id
    pinned = next(n for n in cluster.live() if n is not leader)
    await cluster.settled(leader.node_id)
    beats = f"node.{pinned.node_id}.heartbeat"
    await wait_until(lambda: len(cluster.log.of(beats, since=again.at)) > 4, 3, "four heartbeat intervals")
    assert cluster.log.of(f"node.{pinned.node_id}.lost") == [], "a live node was reported lost"
    assert cluster.log.of(f"node.{leader.node_id}.lost") == [], "the leader reported itself lost"
    file_watch.clean_report()


async def test_paused_leader_wakes_as_a_follower(cluster: Cluster, file_watch: FileWatcher, figure: Figure) -> None:
    for _ in range(3):
        cluster.start()
    first = await cluster.elected()
    epoch = first.data["epoch"]
    paused = cluster.by_id(first.data["node_id"])
    await cluster.settled(paused.node_id)

    stopped_at = paused.send(signal.SIGSTOP)
    successor = await cluster.elected(after_epoch=epoch, since=stopped_at, timeout=TTL_S * 3)
    await wait_until(lambda: time.monotonic() > stopped_at + TTL_S + 0.2, TTL_S * 2, "a pause longer than ttl")
    resumed_at = paused.send(signal.SIGCONT)
    figure("paused_s", round(resumed_at - stopped_at, 3))
    figure("successor_elected_after_pause_s", round(successor.sent_at - stopped_at, 3))

    await paused.wait_log(f"stepped down at epoch {epoch}")
    await cluster.settled(successor.data["node_id"])
    await cluster.log.first(f"node.{paused.node_id}.heartbeat", since=resumed_at, role="worker")
    after = [s for s in cluster.log.seen if s.sender == paused.node_id and s.at >= resumed_at]
    figure("sent_after_waking", sorted({s.key for s in after}))
    assert [s for s in after if claims_leadership(s)] == [], "a stale leader acted after waking"
    lost = cluster.log.of("cluster.leader.lost", node_id=paused.node_id, epoch=epoch)
    assert lost and lost[0].sender == successor.data["node_id"] and lost[0].at <= successor.at
    late = [s for s in after if s.key == "cluster.leader.resigned" and s.data["epoch"] == epoch]
    for other in cluster.live():
        if other is not paused and late:  # its late resignation is refused everywhere
            await other.wait_log(f"ignored stale resignation: {paused.node_id} at epoch {epoch}")
    file_watch.clean_report()
