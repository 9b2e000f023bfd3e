"""Leader lease with a fencing epoch (architecture section 4), behind one small contract (``base.Lease``).

The URL scheme picks the driver: ``redis://`` / ``rediss://`` -> ``RedisLease`` (a cluster), ``local://``
-> ``LocalLease`` (a solo node, always granted, epochs persisted under ``state_dir``). ``LeaseKeeper`` is the
loop a node runs in its task group to win, renew and release the lease.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

from thatdam_bus.errors import ConfigError
from thatdam_bus.lease.base import Acquisition, Lease, LeaseCapabilities, LeaseUnavailable, default_margin
from thatdam_bus.lease.keeper import (
    Follower,
    Leader,
    LeaseKeeper,
    LeaseState,
    OnLeaseChange,
    SteppedDown,
    Unknown,
)
from thatdam_bus.types import Clock

__all__ = [
    "Acquisition",
    "Follower",
    "Leader",
    "Lease",
    "LeaseCapabilities",
    "LeaseKeeper",
    "LeaseState",
    "LeaseUnavailable",
    "OnLeaseChange",
    "SteppedDown",
    "Unknown",
    "default_margin",
    "open_lease",
]


def open_lease(url: str, *, key_prefix: str, node_id: str, ttl_s: float, clock: Clock = time.monotonic,
               state_dir: Path | None = None, margin_s: float | None = None,
               op_timeout_s: float | None = None) -> Lease:
    """A lease for ``url``; nothing is contacted until the first ``acquire``. ``aclose()`` it when done.

    ``margin_s`` (default ``max(ttl * 0.2, 0.5)``, at most ttl/2) is how much sooner than the backend the
    holder stops trusting its lease; ``op_timeout_s`` (default ttl/4) bounds each backend call.
    """
    scheme = urlsplit(url).scheme
    if scheme in ("redis", "rediss"):
        from thatdam_bus.lease.redis_lease import RedisLease

        return RedisLease(url, key_prefix=key_prefix, node_id=node_id, ttl_s=ttl_s, clock=clock,
                          margin_s=margin_s, op_timeout_s=op_timeout_s)
    if scheme == "local":
        from thatdam_bus.lease.local_lease import LocalLease

        return LocalLease(node_id=node_id, ttl_s=ttl_s, clock=clock, state_dir=state_dir,
                          margin_s=margin_s, op_timeout_s=op_timeout_s)
    raise ConfigError(f"unsupported lease URL scheme {scheme!r} in {url!r} (use redis://, rediss:// or local://)")
