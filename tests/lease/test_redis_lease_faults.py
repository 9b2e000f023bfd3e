"""Faults against the real Redis: a leader cut off (or hung) behind a TCP proxy, competing keepers, a leader
abandoned without release, and a graceful hand-over. Each test prints its measured figures (``-rP`` shows
them).

The safety claim under test (architecture section 4): a leader that cannot renew steps down before its Redis
key can have expired, so no two keepers ever both believe they lead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.support import wait_until
from tests.tcp_proxy import TcpProxy
from thatdam_bus.lease import (
    Follower,
    Leader,
    Lease,
    LeaseKeeper,
    LeaseState,
    SteppedDown,
    Unknown,
    open_lease,
)

TTL_S = 1.5
SLACK_S = 0.25  # scheduling and round trips on a loaded CI box


@dataclass
class Recorder:
    """The ``on_change`` callback of one keeper: every state with the monotonic time it was reported."""

    events: list[tuple[float, LeaseState]] = field(default_factory=list)

    async def __call__(self, state: LeaseState) -> None:
        self.events.append((time.monotonic(), state))

    def when(self, kind: type, after: float = 0.0) -> float | None:
        return next((t for t, s in self.events if isinstance(s, kind) and t >= after), None)

    def seen(self, kind: type, after: float = 0.0) -> Callable[[], bool]:
        return lambda: self.when(kind, after) is not None


class Cluster:
    """Opens leases on one key prefix and closes them (and deletes the keys) at teardown."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.redis_url, self.prefix = redis_url, prefix
        self.leases: list[Lease] = []

    def keeper(self, node_id: str, url: str | None = None, **options: Any) -> tuple[LeaseKeeper, Recorder]:
        lease = open_lease(url or self.redis_url, key_prefix=self.prefix, node_id=node_id, ttl_s=TTL_S)
        self.leases.append(lease)
        recorder = Recorder()
        return LeaseKeeper(lease, recorder, **options), recorder

    async def aclose(self) -> None:
        for lease in self.leases:
            await lease.aclose()
        client = aioredis.Redis.from_url(self.redis_url)
        async with client:
            await client.delete(f"{self.prefix}:leader", f"{self.prefix}:epoch")


@pytest.fixture
async def cluster(redis_url: str, prefix: str) -> AsyncIterator[Cluster]:
    cluster = Cluster(redis_url, prefix)
    yield cluster
    await cluster.aclose()


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[TcpProxy]:
    async with TcpProxy("127.0.0.1", 6379) as proxy:
        yield proxy


async def _isolated_leader_steps_down_first(cluster: Cluster, proxy: TcpProxy, fault: str) -> None:
    """Shared body of the cut and stall tests: ``a`` leads through the proxy, ``b`` uses Redis directly."""
    a, a_log = cluster.keeper("a", proxy.url())
    b, b_log = cluster.keeper("b")
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(a.run())]
        await wait_until(lambda: a.is_leader, 5, "a to lead")
        tasks.append(group.create_task(b.run()))
        await wait_until(lambda: isinstance(b.state, Follower), 5, "b to follow")
        a_epoch = a.current_epoch
        proxy.cut() if fault == "cut" else proxy.stall()
        t_fault = time.monotonic()
        confirmed = a.lease.confirmed_at  # no renew can succeed from here on
        assert confirmed is not None
        await wait_until(lambda: b.is_leader, TTL_S + 3, "b to take over")
        t_down, t_b = a_log.when(SteppedDown), b_log.when(Leader)
        assert t_down is not None and t_b is not None
        assert t_down < confirmed + TTL_S, "a stepped down only after its key could have expired"
        assert t_down <= t_b and b.current_epoch > a_epoch
        proxy.heal()
        await wait_until(lambda: a.state == Follower("b", b.current_epoch), 5, "a to follow b after healing")
        print(f"{fault}: a stepped down {confirmed + TTL_S - t_down:.3f}s before its earliest expiry "
              f"({t_down - t_fault:.3f}s after the fault); b led {t_b - t_fault:.3f}s after the fault, "
              f"{t_b - t_down:.3f}s after a stepped down; epochs {a_epoch} -> {b.current_epoch}")
        for task in tasks:
            task.cancel()
    assert any(isinstance(s, Unknown) for _, s in a_log.events)


async def test_cut_leader_steps_down_before_its_key_expires(cluster: Cluster, proxy: TcpProxy) -> None:
    await _isolated_leader_steps_down_first(cluster, proxy, "cut")


async def test_hung_redis_leader_steps_down_before_its_key_expires(cluster: Cluster, proxy: TcpProxy) -> None:
    await _isolated_leader_steps_down_first(cluster, proxy, "stall")


async def test_three_keepers_never_lead_at_once(cluster: Cluster) -> None:
    """Churn through a graceful exit and an abandonment; an auditor checks "at most one leader" throughout."""
    keepers, logs = zip(*(cluster.keeper(f"n{i}") for i in range(3)), strict=True)
    overlaps: list[list[str]] = []

    async def audit() -> None:
        while True:
            leaders = [k.lease.node_id for k in keepers if k.is_leader]
            if len(leaders) > 1:
                overlaps.append(leaders)
            await asyncio.sleep(0.005)

    async with asyncio.TaskGroup() as group:
        auditor = group.create_task(audit())
        tasks = [group.create_task(k.run()) for k in keepers]
        for release in (True, False):
            await wait_until(_any_leader(keepers), TTL_S + 3, "a leader")
            leader = next(i for i, k in enumerate(keepers) if k.is_leader)
            keepers[leader].release_on_exit = release
            tasks[leader].cancel()
            others = [k for i, k in enumerate(keepers) if i != leader]
            await wait_until(_any_leader(others), TTL_S + 3, "the next leader")
        for task in [*tasks, auditor]:
            task.cancel()
    assert not overlaps
    terms = sorted((t, s.epoch) for log in logs for t, s in log.events if isinstance(s, Leader))
    epochs = [epoch for _, epoch in terms]
    assert len(epochs) == 3 and epochs == sorted(set(epochs))  # three terms, each with a larger epoch


def _any_leader(keepers: Sequence[LeaseKeeper]) -> Callable[[], bool]:
    return lambda: any(k.is_leader for k in keepers)


async def test_abandoned_lease_is_taken_over_within_ttl_plus_retry(cluster: Cluster) -> None:
    """SIGKILL-like: the leader vanishes without releasing; the standby waits out the key's ttl."""
    a, _ = cluster.keeper("a", release_on_exit=False)
    b, b_log = cluster.keeper("b")
    takeover = await _takeover_after_leader_exit(a, b, b_log)
    print(f"abandoned: b led {takeover:.3f}s after a vanished (ttl {TTL_S}s, retry {b.retry_s:.3f}s)")
    assert takeover <= TTL_S + b.retry_s + SLACK_S


async def test_released_lease_is_taken_over_within_a_retry_period(cluster: Cluster) -> None:
    a, _ = cluster.keeper("a")
    b, b_log = cluster.keeper("b")
    takeover = await _takeover_after_leader_exit(a, b, b_log)
    print(f"released: b led {takeover:.3f}s after a exited (retry {b.retry_s:.3f}s)")
    assert takeover <= b.retry_s + SLACK_S


async def _takeover_after_leader_exit(a: LeaseKeeper, b: LeaseKeeper, b_log: Recorder) -> float:
    """Seconds from cancelling leader ``a`` until follower ``b`` reports ``Leader`` with a higher epoch."""
    async with asyncio.TaskGroup() as group:
        running_a = group.create_task(a.run())
        await wait_until(lambda: a.is_leader, 5, "a to lead")
        running_b = group.create_task(b.run())
        await wait_until(lambda: isinstance(b.state, Follower), 5, "b to follow")
        a_epoch = a.current_epoch
        t_exit = time.monotonic()
        running_a.cancel()
        await wait_until(b_log.seen(Leader, after=t_exit), TTL_S + 3, "b to take over")
        running_b.cancel()
    t_b = b_log.when(Leader, after=t_exit)
    assert t_b is not None and b.current_epoch > a_epoch
    return t_b - t_exit


async def test_keeper_reports_unknown_until_redis_is_reachable(cluster: Cluster, proxy: TcpProxy) -> None:
    proxy.cut()
    a, a_log = cluster.keeper("a", proxy.url())
    async with asyncio.TaskGroup() as group:
        running = group.create_task(a.run())
        await wait_until(a_log.seen(Unknown), 5, "a to report unknown")
        assert not a.is_leader
        proxy.heal()
        await wait_until(lambda: a.is_leader, 5, "a to lead once Redis is back")
        running.cancel()
    assert [type(s) for _, s in a_log.events] == [Unknown, Leader, SteppedDown]


async def test_shutdown_with_hung_redis_still_steps_down_promptly(cluster: Cluster, proxy: TcpProxy) -> None:
    a, a_log = cluster.keeper("a", proxy.url())
    async with asyncio.TaskGroup() as group:
        running = group.create_task(a.run())
        await wait_until(lambda: a.is_leader, 5, "a to lead")
        proxy.stall()
        t_exit = time.monotonic()
        running.cancel()
    took = time.monotonic() - t_exit
    print(f"shutdown on a hung Redis: stepped down and exited in {took:.3f}s (op timeout {TTL_S / 4}s)")
    assert isinstance(a_log.events[-1][1], SteppedDown) and a_log.events[-1][0] - t_exit < 0.05
    assert took < TTL_S / 4 + SLACK_S


async def test_failing_renew_raises_trouble_while_trusted_and_exit_ends_the_term_without_release(
        cluster: Cluster, proxy: TcpProxy, redis_url: str) -> None:
    """The node's partition check hangs on ``on_trouble``: it must fire on the first failed renew, while the
    lease is still trusted (so there is time to reach solo before expiry). Cancelled with ``release_on_exit``
    false, the keeper still reports the end of its term, and leaves the key to expire (no release attempt)."""
    troubles: list[bool] = []  # was the lease still trusted when trouble was raised?
    keepers: list[LeaseKeeper] = []
    a, a_log = cluster.keeper("a", proxy.url(), on_trouble=lambda: troubles.append(keepers[0].is_leader))
    keepers.append(a)
    async with asyncio.TaskGroup() as group:
        task = group.create_task(a.run())
        await wait_until(lambda: a.is_leader, 5, "a to lead")
        proxy.stall()
        await wait_until(lambda: bool(troubles), TTL_S, "a failed renew to raise trouble")
        assert troubles[0], "trouble came only after the lease stopped being trusted"
        a.release_on_exit = False
        task.cancel()
    ended = [s for _, s in a_log.events if isinstance(s, SteppedDown)]
    assert [s.reason for s in ended] == ["exit without release"]
    async with aioredis.Redis.from_url(redis_url) as client:
        assert await client.get(f"{cluster.prefix}:leader") is not None, "the key was released anyway"
