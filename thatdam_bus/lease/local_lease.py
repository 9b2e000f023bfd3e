"""``LocalLease`` (``local://``): the lease of a cluster of one, for a solo node with no infrastructure.

There is no one to contend with, so every acquire is granted, and with a fresh epoch: a term that ended (by
release, or because it went untrusted) never resumes under its old number. The lease still expires on the
injected clock as the Redis key would, so a process pause longer than the ttl ends the term the same way on
both drivers. With a state directory the epoch counter is persisted (temp file, fsync, rename) *before* a
grant is answered, so a restarted node never reuses an epoch it may already have stamped on events.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from thatdam_bus.lease.base import Acquisition, LeaseBase, LeaseCapabilities, LeaseUnavailable
from thatdam_bus.types import Clock

EPOCH_FILE = "lease.epoch"


class EpochFile:
    """A monotonic counter in one small file; ``bump`` is blocking and meant for ``asyncio.to_thread``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> int:
        try:
            return int(self.path.read_text().strip() or 0)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            raise LeaseUnavailable(f"cannot read the lease epoch from {self.path}: {exc}") from exc

    def bump(self, floor: int) -> int:
        """Write and return an epoch above both the stored one and ``floor``; durable before it returns."""
        epoch = max(self.read(), floor) + 1
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            with open(tmp, "w") as handle:
                handle.write(f"{epoch}\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            raise LeaseUnavailable(f"cannot persist the lease epoch to {self.path}: {exc}") from exc
        return epoch


class LocalLease(LeaseBase):
    """In-process lease with one possible holder; epochs only grow, across restarts given a state dir."""

    def __init__(self, *, node_id: str, ttl_s: float, clock: Clock = time.monotonic,
                 state_dir: Path | None = None, margin_s: float | None = None,
                 op_timeout_s: float | None = None) -> None:
        super().__init__(node_id=node_id, ttl_s=ttl_s, clock=clock, margin_s=margin_s,
                         op_timeout_s=op_timeout_s)
        self._store = EpochFile(state_dir / EPOCH_FILE) if state_dir is not None else None
        self._counter = 0
        self._granted: int | None = None
        self._expires_at = 0.0
        persistent = state_dir is not None
        self.capabilities = LeaseCapabilities("local", multi_holder=False, persistent_epochs=persistent)

    async def _acquire(self, floor: int) -> Acquisition:
        floor = max(floor, self._counter)
        if self._store is not None:
            epoch = await asyncio.to_thread(self._store.bump, floor)
        else:
            epoch = floor + 1
        self._counter = epoch
        self._granted, self._expires_at = epoch, self._clock() + self.ttl_s
        return Acquisition(granted=True, holder=self.node_id, epoch=epoch, holder_ttl_s=self.ttl_s)

    async def _renew(self, epoch: int) -> bool:
        now = self._clock()
        if self._granted != epoch or now >= self._expires_at:
            return False
        self._expires_at = now + self.ttl_s
        return True

    async def _release(self, epoch: int) -> bool:
        if self._granted != epoch:
            return False
        self._granted = None
        return True

    async def aclose(self) -> None:
        """Nothing to close; the epoch file is complete after every grant."""

    def __repr__(self) -> str:
        where = self._store.path if self._store is not None else "memory"
        return f"<LocalLease {where} {self._state_repr()}>"
