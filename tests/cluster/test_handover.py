"""The keeper's part in a graceful hand-over, in-process against the real Redis: a follower told that the holder
resigned takes over at once (not at its next retry), and a grant that lands while a keeper is being cancelled is
released on the way out (not left to block the cluster for a ttl). Both back the SIGTERM figures of the process
tests with deterministic cases."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from tests.support import wait_until
from thatdam_bus.lease import Acquisition, Leader, LeaseKeeper, LeaseState, open_lease
from thatdam_bus.lease.redis_lease import RedisLease

pytestmark = pytest.mark.broker
TTL_S = 2.0
SLOW_RETRY_S = 30.0
"""A follower's retry period far longer than the test: only the resignation can make it contend."""


@pytest.fixture
async def key_prefix(redis_url: str, prefix: str) -> AsyncIterator[str]:
    yield f"{prefix}:default"
    lease = open_lease(redis_url, key_prefix=f"{prefix}:default", node_id="cleanup", ttl_s=TTL_S)
    assert isinstance(lease, RedisLease)
    await lease._client.delete(lease.leader_key, lease.epoch_key)
    await lease.aclose()


async def test_a_follower_takes_over_at_once_when_the_holder_resigns(redis_url: str, key_prefix: str) -> None:
    states: list[LeaseState] = []

    async def record(state: LeaseState) -> None:
        states.append(state)

    holder = LeaseKeeper(open_lease(redis_url, key_prefix=key_prefix, node_id="holder", ttl_s=TTL_S))
    follower = LeaseKeeper(open_lease(redis_url, key_prefix=key_prefix, node_id="follower", ttl_s=TTL_S),
                           record, retry_s=SLOW_RETRY_S)
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(holder.run())]
            try:
                await wait_until(lambda: holder.is_leader, 5, "the holder to lead")
                tasks.append(group.create_task(follower.run()))
                await wait_until(lambda: bool(states), 5, "the follower's first attempt")
                epoch = holder.current_epoch
                resigned_at = time.monotonic()
                follower.holder_resigned(epoch)  # what the bus tells it; the release may land a little later
                tasks[0].cancel()  # the holder resigns and releases
                await wait_until(lambda: follower.is_leader, 1.0, "the follower to take over")
                print(f"FIGURE takeover_after_resignation_s = {time.monotonic() - resigned_at:.3f}")
                assert isinstance(follower.state, Leader) and follower.state.epoch == epoch + 1
            finally:
                for task in tasks:
                    task.cancel()
    finally:
        await holder.lease.aclose()
        await follower.lease.aclose()


class SlowReplyLease(RedisLease):
    """Acquires at Redis, then waits for ``reply`` before returning: a grant whose answer is still in flight."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.granted_at_redis = asyncio.Event()
        self.reply = asyncio.Event()

    async def _acquire(self, floor: int) -> Acquisition:
        got = await super()._acquire(floor)
        self.granted_at_redis.set()
        await self.reply.wait()
        return got


async def test_a_grant_landing_during_shutdown_is_released(redis_url: str, key_prefix: str) -> None:
    lease = SlowReplyLease(redis_url, key_prefix=key_prefix, node_id="stopping", ttl_s=TTL_S)
    keeper = LeaseKeeper(lease)
    task = asyncio.ensure_future(keeper.run())
    try:
        await asyncio.wait_for(lease.granted_at_redis.wait(), 5)
        assert await lease._client.get(lease.leader_key) is not None
        task.cancel()
        for _ in range(3):  # let the cancellation reach the keeper while the reply is still in flight
            await asyncio.sleep(0)
        lease.reply.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
        assert await lease._client.get(lease.leader_key) is None, "the late grant must be released"
    finally:
        task.cancel()
        await lease.aclose()
