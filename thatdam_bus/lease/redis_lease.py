"""``RedisLease``: the cluster lease on Redis (``redis://``, ``rediss://``), three Lua scripts, one key pair.

``<prefix>:leader`` holds ``"<node_id>:<epoch>"`` with a PX ttl; ``<prefix>:epoch`` is the cluster counter.
Each operation is one script, so check-and-act is atomic at the server. redis-py's own retries are off: a
retried acquire whose first reply was lost would find our own value and misreport it, and the keeper already
retries on its own schedule, under deadlines it chooses. For the same reason redis-py gets no
``socket_timeout``: our ``asyncio.timeout`` is the deadline, and on Python 3.11 redis-py's timed send goes
through ``asyncio.wait_for``, which can swallow a cancellation (CPython gh-86296) and leave a keeper running
after its task group cancelled it.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from thatdam_bus.lease.base import Acquisition, LeaseBase, LeaseCapabilities, LeaseUnavailable
from thatdam_bus.types import Clock

ACQUIRE_LUA = """
local current = redis.call('GET', KEYS[1])
if current then
  return {0, current, redis.call('PTTL', KEYS[1])}
end
local epoch = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[3])
if epoch <= floor then
  epoch = floor + 1
  redis.call('SET', KEYS[2], string.format('%d', epoch))
end
local value = ARGV[1] .. ':' .. string.format('%d', epoch)
redis.call('SET', KEYS[1], value, 'PX', ARGV[2], 'NX')
return {1, value, tonumber(ARGV[2])}
"""
"""Free: bump the epoch (never below ``floor``, the newest epoch the caller has seen, so a Redis that lost its
counter cannot hand out an old one) and take the key. Held: report the holder's value and remaining PTTL."""

RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def parse_holder(value: bytes | str) -> tuple[str, int]:
    """``"<node_id>:<epoch>"`` -> (node_id, epoch); node ids may themselves contain colons."""
    text = value.decode() if isinstance(value, bytes) else value
    node_id, _, epoch = text.rpartition(":")
    return node_id, int(epoch)


def redact(url: str) -> str:
    """The URL without its password, fit for reprs and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisLease(LeaseBase):
    """The shared lease: any number of nodes contend; the Redis key decides."""

    def __init__(self, url: str, *, key_prefix: str, node_id: str, ttl_s: float,
                 clock: Clock = time.monotonic, margin_s: float | None = None,
                 op_timeout_s: float | None = None) -> None:
        super().__init__(node_id=node_id, ttl_s=ttl_s, clock=clock, margin_s=margin_s,
                         op_timeout_s=op_timeout_s)
        self.capabilities = LeaseCapabilities("redis", multi_holder=True, persistent_epochs=True)
        self.url = redact(url)
        self.leader_key = f"{key_prefix}:leader"
        self.epoch_key = f"{key_prefix}:epoch"
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._client = aioredis.Redis.from_url(
            url,
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=self.op_timeout_s,
            socket_timeout=None,
        )
        self._acquire_script = self._client.register_script(ACQUIRE_LUA)
        self._renew_script = self._client.register_script(RENEW_LUA)
        self._release_script = self._client.register_script(RELEASE_LUA)

    def _value(self, epoch: int) -> str:
        return f"{self.node_id}:{epoch}"

    async def _acquire(self, floor: int) -> Acquisition:
        keys, args = [self.leader_key, self.epoch_key], [self.node_id, str(self._ttl_ms), str(floor)]
        try:
            granted, value, pttl = await self._acquire_script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise LeaseUnavailable(f"Redis lease acquire at {self.url} failed: {exc}") from exc
        holder, epoch = parse_holder(value)
        holder_ttl = int(pttl) / 1000 if int(pttl) >= 0 else None
        return Acquisition(granted=bool(granted), holder=holder, epoch=epoch, holder_ttl_s=holder_ttl)

    async def _renew(self, epoch: int) -> bool:
        return await self._compare_and(self._renew_script, [self._value(epoch), self._ttl_ms], "renew")

    async def _release(self, epoch: int) -> bool:
        return await self._compare_and(self._release_script, [self._value(epoch)], "release")

    async def _compare_and(self, script: AsyncScript, args: list[str | int], what: str) -> bool:
        try:
            return bool(await script(keys=[self.leader_key], args=args))
        except (RedisError, OSError) as exc:
            raise LeaseUnavailable(f"Redis lease {what} at {self.url} failed: {exc}") from exc

    async def aclose(self) -> None:
        """Close the connection pool; the lease itself is left alone (``release`` first to hand it over)."""
        await self._client.aclose()

    def __repr__(self) -> str:
        return f"<RedisLease {self.url} key={self.leader_key} {self._state_repr()}>"
