"""One lease contract, both drivers: the same tests run against the real Redis and the solo ``local://``
lease.

Tests that need a second contender are skipped for drivers without the ``multi_holder`` capability (a solo
node is by design the only holder). Time-dependent rules use an injected fake clock, so they are exact and
fast.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.support import wait_until
from thatdam_bus.errors import ConfigError, TransportError
from thatdam_bus.lease import (
    Leader,
    Lease,
    LeaseKeeper,
    LeaseState,
    LeaseUnavailable,
    OnLeaseChange,
    SteppedDown,
    open_lease,
)
from thatdam_bus.lease.local_lease import LocalLease
from thatdam_bus.types import Clock

KINDS = ["redis", "local"]


class FakeClock:
    """A monotonic clock that moves only when told to: process pauses on demand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class LeaseKit:
    """Opens leases of one kind that share one backend (one Redis key prefix, or one state dir)."""

    def __init__(self, kind: str, prefix: str, state_dir: Path, redis_url: str | None) -> None:
        self.kind, self.prefix, self.state_dir, self.redis_url = kind, prefix, state_dir, redis_url
        self._open: list[Lease] = []

    def open(self, node_id: str = "a", *, ttl_s: float = 5.0, clock: Clock = time.monotonic,
             margin_s: float | None = None) -> Lease:
        url = self.redis_url if self.kind == "redis" else "local://"
        assert url is not None
        lease = open_lease(url, key_prefix=self.prefix, node_id=node_id, ttl_s=ttl_s, clock=clock,
                           state_dir=self.state_dir, margin_s=margin_s)
        self._open.append(lease)
        return lease

    def contender(self, first: Lease, ttl_s: float = 5.0) -> Lease:
        """Someone else who wants the lease: another node, or for a solo lease the same node restarted."""
        multi = first.capabilities.multi_holder
        return self.open("b" if multi else first.node_id, ttl_s=ttl_s)

    async def aclose(self) -> None:
        for lease in self._open:
            await lease.aclose()
        if self.redis_url is not None:
            client = aioredis.Redis.from_url(self.redis_url)
            async with client:
                await client.delete(f"{self.prefix}:leader", f"{self.prefix}:epoch")


@pytest.fixture(params=KINDS)
async def kit(request: pytest.FixtureRequest, prefix: str, state_dir: Path) -> AsyncIterator[LeaseKit]:
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    kit = LeaseKit(request.param, prefix, state_dir, redis_url)
    yield kit
    await kit.aclose()


MULTI_HOLDER_KINDS = ["redis"]  # local:// has a single holder by design (capabilities.multi_holder is False)


@pytest.fixture(params=MULTI_HOLDER_KINDS)
async def multi_kit(request: pytest.FixtureRequest, prefix: str, state_dir: Path) -> AsyncIterator[LeaseKit]:
    """Drivers where several holders contend; checked against the capability below."""
    kit = LeaseKit(request.param, prefix, state_dir, request.getfixturevalue("redis_url"))
    yield kit
    await kit.aclose()


def needs_multi_holder(lease: Lease) -> None:
    assert lease.capabilities.multi_holder, f"{lease.capabilities.scheme}:// does not declare multi_holder"


async def test_acquire_grants_increasing_epochs(kit: LeaseKit) -> None:
    lease = kit.open("a")
    first = await lease.acquire()
    assert first.granted and first.holder == "a" and first.epoch >= 1
    assert lease.epoch == first.epoch and lease.is_valid()
    assert await lease.release()
    assert lease.epoch is None and not lease.is_valid()
    second = await lease.acquire()
    assert second.granted and second.epoch > first.epoch
    assert lease.current_epoch == second.epoch


async def test_a_second_holder_is_refused_and_learns_the_epoch(multi_kit: LeaseKit) -> None:
    a = multi_kit.open("a")
    needs_multi_holder(a)
    first = await a.acquire()
    b = multi_kit.open("b")
    got = await b.acquire()
    assert not got.granted and (got.holder, got.epoch) == ("a", first.epoch)
    assert got.holder_ttl_s is not None and 0 < got.holder_ttl_s <= a.ttl_s
    assert b.epoch is None and b.current_epoch == first.epoch
    assert a.epoch == first.epoch


async def test_renew_keeps_the_lease_past_its_ttl(kit: LeaseKit) -> None:
    lease = kit.open("a", ttl_s=0.6)
    first = await lease.acquire()
    started = time.monotonic()
    while time.monotonic() - started < 3 * lease.ttl_s:
        await asyncio.sleep(lease.ttl_s / 6)  # pacing the renewals is the behaviour under test
        assert await lease.renew()
        assert lease.is_valid()
    assert lease.epoch == first.epoch
    if lease.capabilities.multi_holder:
        assert not (await kit.open("b", ttl_s=0.6).acquire()).granted


async def test_release_hands_over_at_once_with_a_higher_epoch(kit: LeaseKit) -> None:
    a = kit.open("a")
    first = await a.acquire()
    assert await a.release()
    got = await kit.contender(a).acquire()
    assert got.granted and got.epoch > first.epoch
    assert not await a.renew() and not await a.release()


async def test_an_expired_lease_goes_to_another_with_a_higher_epoch(multi_kit: LeaseKit) -> None:
    frozen = FakeClock()  # "a" is paused: it still trusts its lease, so only the backend can refuse it
    a = multi_kit.open("a", ttl_s=0.3, clock=frozen, margin_s=0.0)
    needs_multi_holder(a)
    first = await a.acquire()
    b = multi_kit.open("b", ttl_s=0.3)
    started = time.monotonic()
    async with asyncio.timeout(3):
        while not (got := await b.acquire()).granted:
            await asyncio.sleep(0.02)
    assert time.monotonic() - started > 0.2
    assert got.epoch > first.epoch
    assert a.is_valid() and not await a.renew()  # compare-and-PEXPIRE refuses the stale holder
    assert a.epoch is None


async def test_validity_ends_margin_before_the_ttl(kit: LeaseKit) -> None:
    clock = FakeClock()
    lease = kit.open("a", ttl_s=10.0, clock=clock)
    assert lease.margin_s == 2.0 and lease.validity_s == 8.0
    got = await lease.acquire()
    assert lease.remaining() == pytest.approx(8.0)
    clock.advance(7.9)
    assert lease.is_valid() and lease.remaining() == pytest.approx(0.1)
    assert await lease.renew()
    assert lease.remaining() == pytest.approx(8.0)
    clock.advance(8.0)
    assert not lease.is_valid() and lease.remaining() <= 0 and lease.epoch is None
    assert not await lease.renew()
    assert lease.current_epoch == got.epoch


async def test_validity_counts_from_the_start_of_the_call(kit: LeaseKit) -> None:
    clock = FakeClock()
    lease = kit.open("a", ttl_s=10.0, clock=clock)
    async with asyncio.TaskGroup() as group:
        acquiring = group.create_task(lease.acquire())
        await asyncio.sleep(0)  # the acquire has read the clock and is waiting on its backend
        clock.advance(3.0)  # a slow answer (or a pause) while the request is in flight
    assert acquiring.result().granted
    assert lease.remaining() == pytest.approx(5.0)


async def test_an_observed_epoch_is_a_floor(kit: LeaseKit) -> None:
    lease = kit.open("a")
    lease.observe_epoch(100)
    got = await lease.acquire()
    assert got.epoch == 101
    assert await lease.release()
    assert (await kit.contender(lease).acquire()).epoch == 102


async def test_keeper_leads_then_releases_on_exit(kit: LeaseKit) -> None:
    states: list[LeaseState] = []
    lease = kit.open("a", ttl_s=1.5)
    keeper = LeaseKeeper(lease, _append(states))
    async with asyncio.TaskGroup() as group:
        running = group.create_task(keeper.run())
        await wait_until(lambda: keeper.is_leader, 5, "the keeper to lead")
        running.cancel()
    epoch = keeper.current_epoch
    assert states == [Leader(epoch), SteppedDown(epoch, "shutdown")]
    got = await kit.contender(lease).acquire()
    assert got.granted and got.epoch > epoch


async def test_keeper_steps_down_after_a_pause_longer_than_the_ttl(kit: LeaseKit) -> None:
    clock = FakeClock()
    states: list[LeaseState] = []
    keeper = LeaseKeeper(kit.open("a", ttl_s=1.5, clock=clock), _append(states))
    async with asyncio.TaskGroup() as group:
        running = group.create_task(keeper.run())
        await wait_until(lambda: keeper.is_leader, 5, "the keeper to lead")
        first = keeper.current_epoch
        clock.advance(1.5)  # the process was paused: it must not act as leader on waking
        assert not keeper.is_leader
        await wait_until(lambda: len(states) >= 3, 5, "step-down and a new term")
        running.cancel()
    assert states[0] == Leader(first)
    assert isinstance(states[1], SteppedDown) and "validity ran out" in states[1].reason
    assert isinstance(states[2], Leader) and states[2].epoch > first


class SwallowingLease(LocalLease):
    """A backend whose renew swallows cancellation, as ``asyncio.wait_for`` can on Python 3.11."""

    def __init__(self) -> None:
        super().__init__(node_id="a", ttl_s=30.0)
        self.in_renew = asyncio.Event()
        self.swallow = True

    async def _renew(self, epoch: int) -> bool:
        self.in_renew.set()
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            if not self.swallow:
                raise
            return True  # the bug: the cancel is lost here
        return True


async def test_keeper_honours_a_cancel_swallowed_below_it() -> None:
    lease = SwallowingLease()
    keeper = LeaseKeeper(lease, renew_s=0.05)
    async with asyncio.TaskGroup() as group:
        running = group.create_task(keeper.run())
        await lease.in_renew.wait()
        running.cancel()
        done, _ = await asyncio.wait({running}, timeout=2)
        lease.swallow = False  # so a keeper that ignored the cancel fails this test instead of hanging it
        running.cancel()
    assert done and running.cancelled() and not keeper.is_leader


async def test_local_epochs_survive_a_restart(state_dir: Path) -> None:
    async with open_lease("local://", key_prefix="x", node_id="a", ttl_s=5, state_dir=state_dir) as lease:
        assert lease.capabilities.persistent_epochs
        first = await lease.acquire()
    async with open_lease("local://", key_prefix="x", node_id="a", ttl_s=5, state_dir=state_dir) as lease:
        assert (await lease.acquire()).epoch == first.epoch + 1
    async with open_lease("local://", key_prefix="x", node_id="a", ttl_s=5) as memory_only:
        assert not memory_only.capabilities.persistent_epochs


async def test_unreachable_redis_is_lease_unavailable() -> None:
    async with open_lease("redis://127.0.0.1:1/0", key_prefix="x", node_id="a", ttl_s=2) as lease:
        with pytest.raises(LeaseUnavailable) as caught:
            await lease.acquire()
    assert isinstance(caught.value, TransportError) and caught.value.__cause__ is not None


@pytest.mark.parametrize(("url", "ttl_s", "margin_s"), [
    ("amqp://h/", 5.0, None), ("local://", 0.0, None), ("local://", 1.0, 1.0), ("local://", 1.0, -0.1),
])
def test_bad_configuration_is_a_config_error(url: str, ttl_s: float, margin_s: float | None) -> None:
    with pytest.raises(ConfigError):
        open_lease(url, key_prefix="x", node_id="a", ttl_s=ttl_s, margin_s=margin_s)


async def test_reprs_show_holder_epoch_and_validity(state_dir: Path) -> None:
    url = "redis://user:secret@127.0.0.1:6379/0"
    async with open_lease(url, key_prefix="p", node_id="a", ttl_s=5) as lease:
        assert "secret" not in repr(lease) and "node=a" in repr(lease) and "not held" in repr(lease)
        assert "p:leader" in repr(lease) and "Unknown" in repr(LeaseKeeper(lease))
    async with open_lease("local://", key_prefix="p", node_id="a", ttl_s=5, state_dir=state_dir) as local:
        await local.acquire()
        assert "held=1 valid=" in repr(local) and "lease.epoch" in repr(local)


def _append(states: list[LeaseState]) -> OnLeaseChange:
    async def record(state: LeaseState) -> None:
        states.append(state)

    return record
