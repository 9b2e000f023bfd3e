"""The cluster test harness: real ``thatdam up`` processes on one isolated prefix, an event log that judges what
happened on the bus, per-node TCP proxies for fault injection, and the cleanup that leaves nothing behind.

Everything here is async because the proxies live in the test's event loop: a blocking wait would stall the
bytes of every proxied node. Times are ``time.monotonic()`` of the test process: signal sent, proxy cut, event
received (``Seen.at``); the nodes' own stamps (an envelope's ``time``, a file's mtime) are converted to it, and
latency figures use those, so they do not depend on how promptly the test process was scheduled.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import redis.asyncio as aioredis

from tests.conftest import delete_amqp_prefix
from tests.nodes import NodeProcess
from tests.support import wait_until
from tests.tcp_proxy import TcpProxy
from thatdam_bus.node.cluster_file import ClusterFile, read_cluster_file
from thatdam_bus.topics import topic_matches

TTL_S = 2.0
HEARTBEAT_S = 0.25
PROBE_S = 0.25
RENEW_S = TTL_S / 3
"""The keeper's renew period (and a follower's retry period): ttl/3 < ttl - margin (2 - 0.5)."""
DEVICES = "cam0=test://bars"


def monotonic_of(wall_clock: float) -> float:
    """A wall-clock instant (an envelope's ``time``, a file's mtime: the nodes' own stamps, on this host) on
    the test's monotonic clock, so figures do not depend on how promptly the test process got scheduled."""
    return wall_clock - time.time() + time.monotonic()


def heal(*proxies: TcpProxy) -> float:
    """Let traffic through every proxy again; returns the monotonic time it was done."""
    for proxy in proxies:
        proxy.heal()
    return time.monotonic()


@dataclass(frozen=True)
class Seen:
    """One message as the event log received it."""

    at: float
    key: str
    event: dict[str, Any]

    @property
    def data(self) -> dict[str, Any]:
        return self.event["data"]  # type: ignore[no-any-return]

    @property
    def epoch(self) -> int:
        return int(self.event.get("epoch", 0))

    @property
    def sent_at(self) -> float:
        """When the sender stamped it (``time``), on the test's monotonic clock."""
        return monotonic_of(datetime.fromisoformat(self.event["time"]).timestamp())

    @property
    def sender(self) -> str:
        """The node id in ``source`` (``thatdam://<cluster>/<node_id>/<service>``)."""
        return str(self.event["source"]).split("/")[3]


class EventLog:
    """A plain aio-pika consumer bound to ``#`` on the test's exchange for the whole test."""

    def __init__(self, amqp_url: str, prefix: str) -> None:
        self.amqp_url, self.prefix = amqp_url, prefix
        self.seen: list[Seen] = []
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None

    async def start(self) -> None:
        self._connection = await aio_pika.connect_robust(self.amqp_url)
        channel = await self._connection.channel()
        exchange = await channel.declare_exchange(self.prefix, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, "#")
        await queue.consume(self._record, no_ack=True)

    async def _record(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.seen.append(Seen(time.monotonic(), message.routing_key or "", orjson.loads(message.body)))

    def of(self, pattern: str, since: float = 0.0, **data: Any) -> list[Seen]:
        """Messages whose key matches ``pattern``, received at or after ``since``, with these data fields."""
        return [s for s in self.seen if s.at >= since and topic_matches(pattern, s.key)
                and all(s.data.get(k) == v for k, v in data.items())]

    async def first(self, pattern: str, since: float = 0.0, timeout: float = 10.0,
                    where: Callable[[Seen], bool] = lambda _s: True, **data: Any) -> Seen:
        """The first matching message, waiting for it up to ``timeout`` seconds."""
        def found() -> list[Seen]:
            return [s for s in self.of(pattern, since, **data) if where(s)]
        await wait_until(lambda: bool(found()), timeout, f"{pattern} {data} on the bus")
        return found()[0]

    async def publish(self, routing_key: str, event: dict[str, Any]) -> None:
        """Publish a hand-made envelope with plain aio-pika (what an impostor or an old process would send)."""
        assert self._connection is not None
        channel = await self._connection.channel()
        exchange = await channel.get_exchange(self.prefix, ensure=False)
        body = orjson.dumps(event)
        headers = {"ce-type": event["type"], "ce-id": event["id"]}
        await exchange.publish(aio_pika.Message(body, content_type="application/json", headers=headers),
                               routing_key)
        await channel.close()

    async def aclose(self) -> None:
        if self._connection is not None:
            await self._connection.close()


class ClusterNode:
    """One ``thatdam up`` process with a readable node id (``<name>-<hex>``), driven without blocking the loop."""

    def __init__(self, root: Path, name: str, env: dict[str, str], wrap: Sequence[str] = ()) -> None:
        self.state_dir = root / name
        self.state_dir.mkdir(mode=0o700)
        self.node_id = f"{name}-{uuid.uuid4().hex[:8]}"
        (self.state_dir / "node_id").write_text(self.node_id + "\n")
        self.process = NodeProcess(self.state_dir, wrap=wrap, **env)

    @property
    def pid(self) -> int:
        return self.process.proc.pid

    @property
    def alive(self) -> bool:
        return self.process.proc.poll() is None

    def log(self) -> str:
        return self.process.log()

    def first_logged_at(self) -> float:
        """When the node process logged its first line (its runtime is up, the interpreter and imports done),
        on the test's monotonic clock."""
        stamp = self.log().split(" ", 1)[0].removeprefix("time=")
        return monotonic_of(datetime.fromisoformat(stamp).timestamp())

    def cluster_file_written_at(self) -> float:
        """When cluster.json was last replaced (its mtime), on the test's monotonic clock."""
        return monotonic_of((self.state_dir / "cluster.json").stat().st_mtime)

    def cluster_file(self) -> ClusterFile | None:
        return read_cluster_file(self.state_dir)

    def members(self) -> list[str]:
        view = self.cluster_file()
        return [] if view is None else view.members

    def role(self) -> str | None:
        view = self.cluster_file()
        return None if view is None else str(view.role)

    async def wait_log(self, needle: str, timeout: float = 10.0) -> None:
        await wait_until(lambda: needle in self.log(), timeout, f"{needle!r} in the log of {self.node_id}")

    def send(self, sig: int) -> float:
        """Send ``sig``; returns the monotonic time it was sent."""
        os.kill(self.pid, sig)
        return time.monotonic()

    async def wait_exit(self, timeout: float = 15.0) -> int:
        await wait_until(lambda: not self.alive, timeout, f"exit of {self.node_id}")
        code = self.process.proc.returncode
        self.process._log.close()
        return int(code)

    def kill(self) -> None:
        self.process.kill()

    def __repr__(self) -> str:
        return f"<ClusterNode {self.node_id} pid={self.pid} alive={self.alive}>"


class Cluster:
    """Nodes on one isolated prefix (exchange ``<prefix>``, Redis keys ``<prefix>:*``), plus their proxies."""

    def __init__(self, root: Path, prefix: str, amqp_url: str, redis_url: str) -> None:
        self.root, self.prefix = root, prefix
        self.amqp_url, self.redis_url = amqp_url, redis_url
        self.log = EventLog(amqp_url, prefix)
        self.redis = aioredis.Redis.from_url(redis_url)
        self.nodes: list[ClusterNode] = []
        self.node_ids: set[str] = set()
        """Every node of the test, processes and in-process ones: the senders the event log judges."""
        self.proxies: list[TcpProxy] = []
        self._names = 0

    def env(self, **overrides: str) -> dict[str, str]:
        env = {
            "THATDAM_AMQP_URL": self.amqp_url, "THATDAM_REDIS_URL": self.redis_url,
            "THATDAM_PREFIX": self.prefix, "THATDAM_LEASE_TTL": str(TTL_S),
            "THATDAM_HEARTBEAT_INTERVAL": str(HEARTBEAT_S), "THATDAM_PROBE_INTERVAL": str(PROBE_S),
            "THATDAM_SOURCES": DEVICES, "THATDAM_LOG_LEVEL": "INFO", "THATDAM_CONNECT_TIMEOUT": "1",
        }
        env.update(overrides)
        return env

    def start(self, **env: str) -> ClusterNode:
        self._names += 1
        node = ClusterNode(self.root, f"n{self._names}", self.env(**env))
        self.nodes.append(node)
        self.node_ids.add(node.node_id)
        return node

    async def proxy(self, upstream_port: int) -> TcpProxy:
        """A started proxy in front of ``127.0.0.1:<upstream_port>``, closed at teardown."""
        proxy = TcpProxy("127.0.0.1", upstream_port)
        await proxy.start()
        self.proxies.append(proxy)
        return proxy

    def live(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.alive]

    def by_id(self, node_id: str) -> ClusterNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    async def leader_key(self) -> str | None:
        value = await self.redis.get(f"{self.prefix}:default:leader")
        return value.decode() if isinstance(value, bytes) else value

    async def elected(self, after_epoch: int = 0, since: float = 0.0, timeout: float = 10.0) -> Seen:
        """The first ``cluster.leader.elected`` with an epoch above ``after_epoch``."""
        return await self.log.first("cluster.leader.elected", since, timeout,
                                    where=lambda s: s.data["epoch"] > after_epoch)

    async def settled(self, leader: str, timeout: float = 10.0) -> None:
        """Every live node's cluster.json names ``leader``, which alone has the role leader."""
        def agreed() -> bool:
            for node in self.live():
                view = node.cluster_file()
                if view is None or view.leader is None or not view.leader.url.endswith(f"/{leader}"):
                    return False
                if (view.role == "leader") != (node.node_id == leader):
                    return False
            return True
        await wait_until(agreed, timeout, f"every cluster.json to follow {leader}")

    async def aclose(self) -> None:
        for node in self.nodes:
            node.kill()
        for proxy in self.proxies:
            await proxy.aclose()
        await self.log.aclose()
        await delete_amqp_prefix(self.amqp_url, self.prefix, [f"{self.prefix}.recorder"])  # the leader's stream
        keys = [key async for key in self.redis.scan_iter(match=f"{self.prefix}:*")]
        if keys:
            await self.redis.delete(*keys)
        await self.redis.aclose()
