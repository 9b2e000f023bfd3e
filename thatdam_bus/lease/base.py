"""The lease contract: one small interface for "who leads, at which epoch", and the safety bookkeeping every
driver shares.

Architecture section 4. A lease is held for ``ttl`` at the backend, but the holder trusts it only for
``ttl - margin`` counted on its own monotonic clock from the *start* of the last successful acquire or renew.
The backend's timer started no earlier than that instant, so a holder that stops trusting its lease at
``start + ttl - margin`` has stepped down before anyone else can acquire it, even after a process pause
(Kleppmann's case) or a slow network. The epoch is a fencing token: each grant gets a larger one.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self, TypeVar

from thatdam_bus.errors import ConfigError, TransportError
from thatdam_bus.types import Clock

T = TypeVar("T")


class LeaseUnavailable(TransportError):
    """The lease backend could not be reached or did not answer in time; the outcome is unknown."""


@dataclass(frozen=True)
class LeaseCapabilities:
    """What a driver guarantees; the node checks these at start-up (tooz-style characteristics)."""

    scheme: str
    multi_holder: bool
    """Several processes (hosts) contend for the same lease; false for the solo ``local://`` lease."""
    persistent_epochs: bool
    """Epochs survive a restart of this process, so a restarted holder never reuses one."""


@dataclass(frozen=True)
class Acquisition:
    """The answer to ``acquire``: granted to us, or who holds it at which epoch (and for how long yet)."""

    granted: bool
    holder: str
    epoch: int
    holder_ttl_s: float | None = None
    """Seconds the holder's lease has left at the backend when known; a follower may retry just after it."""


def default_margin(ttl_s: float) -> float:
    """``max(20 % of ttl, 0.5 s)``, capped at half the ttl so a short ttl still leaves a usable window."""
    return min(max(ttl_s * 0.2, 0.5), ttl_s * 0.5)


class Lease(Protocol):
    """A leader lease with a fencing epoch. Every call has a deadline; failures raise ``LeaseUnavailable``."""

    capabilities: LeaseCapabilities
    node_id: str
    ttl_s: float
    margin_s: float

    @property
    def epoch(self) -> int | None:
        """The epoch we hold and may still trust (``is_valid``), else None."""

    @property
    def current_epoch(self) -> int:
        """The newest epoch this lease has seen (ours or another holder's); 0 before any. For fencing."""

    @property
    def validity_s(self) -> float:
        """``ttl - margin``: how long one successful acquire/renew may be trusted."""

    @property
    def confirmed_at(self) -> float | None:
        """Clock time at the start of the last successful acquire/renew while held, else None."""

    def is_valid(self) -> bool: ...

    def remaining(self) -> float:
        """Seconds the holder may still act as leader; <= 0 when not held or no longer trusted."""

    def observe_epoch(self, epoch: int) -> None:
        """Record an epoch seen elsewhere (on the bus); the next grant is larger than every epoch observed."""

    async def acquire(self) -> Acquisition: ...

    async def renew(self) -> bool:
        """Extend our lease; False if it is no longer ours (lost or expired). Raises ``LeaseUnavailable``."""

    async def release(self) -> bool:
        """Stop trusting the lease at once, then compare-and-delete it so a standby can take over."""

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class LeaseBase(ABC):
    """Shared bookkeeping: validity on the injected clock, held epoch, newest epoch seen, deadlines.

    Drivers implement only the three backend calls (``_acquire``, ``_renew``, ``_release``) and ``aclose``.
    """

    capabilities: LeaseCapabilities

    def __init__(self, *, node_id: str, ttl_s: float, clock: Clock, margin_s: float | None = None,
                 op_timeout_s: float | None = None) -> None:
        margin = default_margin(ttl_s) if margin_s is None else margin_s
        if not node_id or ttl_s <= 0 or not 0 <= margin < ttl_s:
            raise ConfigError(f"lease needs a node id, ttl > 0 and 0 <= margin < ttl ({ttl_s=}, {margin=})")
        self.node_id = node_id
        self.ttl_s = ttl_s
        self.margin_s = margin
        self.op_timeout_s = op_timeout_s if op_timeout_s is not None else ttl_s / 4
        self._clock = clock
        self._held: int | None = None
        self._confirmed_at: float | None = None
        self._newest = 0

    @property
    def validity_s(self) -> float:
        return self.ttl_s - self.margin_s

    @property
    def confirmed_at(self) -> float | None:
        return self._confirmed_at if self._held is not None else None

    @property
    def epoch(self) -> int | None:
        return self._held if self.is_valid() else None

    @property
    def current_epoch(self) -> int:
        return self._newest

    def remaining(self) -> float:
        if self._held is None or self._confirmed_at is None:
            return 0.0
        return self._confirmed_at + self.validity_s - self._clock()

    def is_valid(self) -> bool:
        return self.remaining() > 0

    def observe_epoch(self, epoch: int) -> None:
        self._newest = max(self._newest, epoch)

    async def acquire(self) -> Acquisition:
        started = self._clock()
        got = await self._deadline(self._acquire(self._newest), self.op_timeout_s, "acquire")
        self.observe_epoch(got.epoch)
        if got.granted:
            self._held, self._confirmed_at = got.epoch, started
        elif self._held is not None and got.epoch != self._held:
            self._forget()
        return got

    async def renew(self) -> bool:
        held = self._held
        if held is None or not self.is_valid():
            self._forget()
            return False
        started = self._clock()
        ok = await self._deadline(self._renew(held), min(self.op_timeout_s, self.remaining()), "renew")
        if self._held != held:
            return False
        if ok:
            self._confirmed_at = started
        else:
            self._forget()
        return ok

    async def release(self) -> bool:
        held = self._held
        self._forget()
        if held is None:
            return False
        return await self._deadline(self._release(held), self.op_timeout_s, "release")

    def _forget(self) -> None:
        """Stop trusting the lease locally, *before* any network call, so no failure there can delay it."""
        self._held = None
        self._confirmed_at = None

    async def _deadline(self, call: Awaitable[T], timeout_s: float, what: str) -> T:
        """Run one backend call under a deadline; a timeout means "unknown": ``LeaseUnavailable``."""
        try:
            async with asyncio.timeout(max(timeout_s, 0.0)):
                return await call
        except TimeoutError as exc:
            raise LeaseUnavailable(f"lease {what} got no answer within {timeout_s:.3f}s") from exc

    @abstractmethod
    async def _acquire(self, floor: int) -> Acquisition:
        """Grant with an epoch greater than both the backend counter and ``floor``, or report the holder."""

    @abstractmethod
    async def _renew(self, epoch: int) -> bool:
        """Extend the backend ttl if the lease is still ours at ``epoch``."""

    @abstractmethod
    async def _release(self, epoch: int) -> bool:
        """Delete the lease if it is still ours at ``epoch``."""

    @abstractmethod
    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def _state_repr(self) -> str:
        held = f"held={self._held} valid={self.remaining():.2f}s" if self.is_valid() else "not held"
        return f"node={self.node_id} {held} newest={self._newest} ttl={self.ttl_s}s"
