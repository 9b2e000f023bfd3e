"""``LeaseKeeper``: the loop a node runs in its task group to win, keep and hand over the lease.

Not leader: try to acquire every ``retry_s`` (sooner when the holder's lease is about to run out). Leader:
renew every ``renew_s``; a renew that fails in transport is retried while the lease is still trusted, a renew
that is refused (someone else holds it) ends the term at once, and when trust runs out (``ttl - margin`` after
the start of the last good renew) the keeper steps down, *then* tries to release. Every backend call carries a
deadline no later than the end of trust, so a hung Redis cannot keep a stale leader acting.

A follower told (by the bus) that the holder resigned (``holder_resigned``) contends at once and polls quickly
until the release lands, so a graceful handover does not wait for a retry period.

``run()`` is a coroutine for the owner's ``TaskGroup``; cancelling it ends a held term (reported as
``SteppedDown``) and releases the lease (compare-and-delete), so a standby takes over at once after a graceful
shutdown; with ``release_on_exit`` false (the backend is known to be out of reach, or a crash is simulated) the
release is skipped and the key expires by itself.

Every failed backend call is also told to ``on_trouble``: a node whose lease backend stops answering checks
at once whether it lost its whole network (then it falls back to solo before its lease could expire) instead
of waiting for its own broker connection to notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from thatdam_bus.errors import ConfigError
from thatdam_bus.lease.base import Acquisition, Lease, LeaseUnavailable
from thatdam_bus.metrics.instruments import LEASE_RENEW_SECONDS

log = logging.getLogger("thatdam_bus.lease")
RELEASE_POLL_S = 0.05
"""How often a follower polls a lease whose holder announced its resignation: the release is imminent."""


@dataclass(frozen=True)
class Leader:
    """We hold the lease at ``epoch`` and may act as leader while ``LeaseKeeper.is_leader``."""

    epoch: int


@dataclass(frozen=True)
class Follower:
    """``holder`` leads at ``epoch`` (maybe our own node id: an older process of ours, not yet expired)."""

    holder: str
    epoch: int


@dataclass(frozen=True)
class SteppedDown:
    """Our term at ``epoch`` ended (lost, untrusted, or released); announce ``cluster.leader.resigned``."""

    epoch: int
    reason: str


@dataclass(frozen=True)
class Unknown:
    """The backend is unreachable and we do not lead; who does is unknown."""

    reason: str = field(compare=False)


LeaseState = Leader | Follower | SteppedDown | Unknown
OnLeaseChange = Callable[[LeaseState], Awaitable[None]]


async def _ignore(_state: LeaseState) -> None:
    return None


def _raise_if_cancel_requested() -> None:
    """Honour a cancellation that a library swallowed (``asyncio.wait_for`` on 3.11 can): a keeper that
    outlives its task group would hold the lease for a node that is shutting down."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError("cancel requested earlier and swallowed below the keeper")


class LeaseKeeper:
    """Contend for, renew and release one ``Lease``; report each change through ``on_change`` (keep it quick:
    while it runs the keeper is not renewing)."""

    def __init__(self, lease: Lease, on_change: OnLeaseChange | None = None, *, renew_s: float | None = None,
                 retry_s: float | None = None, release_on_exit: bool = True,
                 on_trouble: Callable[[], None] | None = None) -> None:
        self.lease = lease
        self.renew_s = renew_s if renew_s is not None else lease.ttl_s / 3
        self.retry_s = retry_s if retry_s is not None else lease.ttl_s / 3
        if not 0 < self.renew_s < lease.validity_s or self.retry_s <= 0:
            raise ConfigError(f"keeper needs 0 < renew_s ({self.renew_s}) < ttl - margin "
                              f"({lease.validity_s}) and retry_s > 0 ({self.retry_s})")
        self.release_on_exit = release_on_exit
        self._on_change = on_change or _ignore
        self._on_trouble = on_trouble or (lambda: None)
        self.state: LeaseState = Unknown("not started")
        self._reported = False  # the first outcome is always reported, even "unknown"
        self._resigned_epoch = 0
        self._wake = asyncio.Event()
        self._interrupted: asyncio.Future[Acquisition] | None = None

    @property
    def is_leader(self) -> bool:
        """True only while we hold a lease we may still trust: check it before acting as leader."""
        return isinstance(self.state, Leader) and self.lease.is_valid()

    @property
    def current_epoch(self) -> int:
        """The newest epoch seen (ours or another holder's): stamp it on events, drop anything older."""
        return self.lease.current_epoch

    def holder_resigned(self, epoch: int) -> None:
        """The holder at ``epoch`` announced its resignation (on the bus): contend now instead of at the next
        retry, and poll quickly while the backend still shows that term (its release is on the way)."""
        self._resigned_epoch = max(self._resigned_epoch, epoch)
        self._wake.set()

    async def run(self) -> None:
        """Keep contending until cancelled; on the way out end a held term (released if ``release_on_exit``)."""
        try:
            while True:
                _raise_if_cancel_requested()
                epoch = await self._contend()
                if epoch is not None:
                    await self._hold(epoch)
        finally:
            await self._settle_interrupted_acquire()
            await self._resign()

    async def _contend(self) -> int | None:
        """One acquire attempt; returns our epoch when granted, else reports and waits for the next try."""
        try:
            got = await self._acquire()
        except LeaseUnavailable as exc:
            self._on_trouble()
            await self._report(Unknown(str(exc)))
            await asyncio.sleep(self.retry_s)
            return None
        if got.granted:
            await self._report(Leader(got.epoch))
            return got.epoch
        await self._report(Follower(got.holder, got.epoch))
        await self._pause(self._follower_wait(got))
        return None

    async def _acquire(self) -> Acquisition:
        """``lease.acquire`` shielded from our cancellation: a grant that lands while the node is stopping is
        then known on the way out and released, instead of leaving the cluster leaderless for a ttl."""
        attempt = asyncio.ensure_future(self.lease.acquire())  # owned here: awaited by run() if we are cancelled
        try:
            return await asyncio.shield(attempt)
        except asyncio.CancelledError:
            self._interrupted = attempt
            raise

    async def _settle_interrupted_acquire(self) -> None:
        """Wait out an acquire that our cancellation interrupted (it has its own deadline); release a grant."""
        attempt, self._interrupted = self._interrupted, None
        if attempt is None:
            return
        try:
            got = await attempt
            if got.granted and self.release_on_exit:
                await self.lease.release()
                log.info("released the lease at epoch %d, granted while stopping", got.epoch)
        except Exception as exc:
            log.info("acquire interrupted by shutdown ended in %r", exc)

    def _follower_wait(self, got: Acquisition) -> float:
        """Retry at the usual period, or just after the holder's lease runs out if that comes sooner, or soon
        if the holder has resigned."""
        wait = self.retry_s if got.holder_ttl_s is None else min(self.retry_s, got.holder_ttl_s + 0.01)
        if got.epoch <= self._resigned_epoch:
            wait = min(wait, RELEASE_POLL_S)
        return wait

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if ``holder_resigned`` wakes us."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        self._wake.clear()

    async def _hold(self, epoch: int) -> None:
        """Renew on schedule while trusted; returns once the term has ended and been reported."""
        last_error: LeaseUnavailable | None = None
        while True:
            _raise_if_cancel_requested()
            await asyncio.sleep(self._next_renew_in(retrying=last_error is not None))
            if not self.lease.is_valid():
                cause = f" (last renew failed: {last_error})" if last_error else ""
                await self._step_down(epoch, f"lease validity ran out{cause}")
                return
            try:
                with LEASE_RENEW_SECONDS.time():
                    kept = await self.lease.renew()
            except LeaseUnavailable as exc:
                last_error = exc
                self._on_trouble()
                log.warning("lease renew at epoch %d failed, %.2fs of trust left: %s",
                            epoch, self.lease.remaining(), exc)
                continue
            if not kept:
                await self._step_down(epoch, "lease lost: no longer ours at the backend")
                return
            last_error = None

    def _next_renew_in(self, *, retrying: bool) -> float:
        """Seconds to the next renew, never past the end of trust (so step-down is never late)."""
        remaining = self.lease.remaining()
        if retrying:
            return max(0.0, min(self.renew_s / 2, remaining))
        return max(0.0, remaining - (self.lease.validity_s - self.renew_s))

    async def _step_down(self, epoch: int, reason: str, *, release: bool = True) -> None:
        """Report first (the node must stop acting now, even if Redis hangs), then compare-and-delete the
        lease so the next leader need not wait for its ttl."""
        await self._report(SteppedDown(epoch, reason))
        if not release:
            return
        try:
            await self.lease.release()
        except LeaseUnavailable as exc:
            log.info("release after stepping down at epoch %d failed: %s", epoch, exc)

    async def _resign(self) -> None:
        """Exit while leading: step down, and release so a standby takes over at once (``release_on_exit``)."""
        if isinstance(self.state, Leader):
            reason = "shutdown" if self.release_on_exit else "exit without release"
            await self._step_down(self.state.epoch, reason, release=self.release_on_exit)

    async def _report(self, state: LeaseState) -> None:
        if state == self.state and self._reported:
            return
        self.state, self._reported = state, True
        level = logging.DEBUG if isinstance(state, Unknown) else logging.INFO
        log.log(level, "lease %s: %s", self.lease.node_id, state)
        await self._on_change(state)

    def __repr__(self) -> str:
        return f"<LeaseKeeper {self.state} leader={self.is_leader} {self.lease!r}>"
