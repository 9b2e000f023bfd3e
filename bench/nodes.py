"""Real ``thatdam up`` processes for the cluster benchmarks (failover, membership, idle): spawn, watch, measure.

The same ideas as the cluster test harness (``tests/cluster/harness.py``), kept here so ``bench/`` does not import
``tests/``: each node is a child process with a minimal environment and its own state dir, its logfmt output
in a file; an ``EventLog`` (plain aio-pika, bound to ``#`` on the bench's exchange) sees what the nodes publish;
every wait is on a condition with a deadline; ``cleanup`` deletes the exchange, queues and Redis keys of the
bench's unique ``bench-*`` prefix.

Times are ``time.monotonic()`` of the bench process. A node's own stamps (an envelope's ``time``) are wall
clock, converted with ``monotonic_of``, so a figure does not depend on how promptly the bench got scheduled.
CPU and memory come from ``/proc/<pid>``: ``utime + stime`` (every thread) and ``VmRSS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import redis.asyncio as aioredis
from common import Row

from thatdam_bus.topics import topic_matches

BIN = Path(sys.executable).parent
REDIS_URL = os.environ.get("THATDAM_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def monotonic_of(wall_clock: float) -> float:
    """A wall-clock instant of this host on the bench's monotonic clock."""
    return wall_clock - time.time() + time.monotonic()


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.01) -> None:
    """Poll ``predicate`` until true; ``TimeoutError`` naming ``what`` after ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(poll)
    except TimeoutError:
        raise TimeoutError(f"no {what} within {timeout:g} s") from None


def finish(row: Row) -> Row:
    """Report (text and JSON line) and save (``bench/results``) one row."""
    row.report()
    row.save()
    return row


# -- /proc ----------------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime: fields 14 and 15 of stat(5)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


# -- nodes ----------------------------------------------------------------------------------------------------


def node_env(state_dir: Path, **extra: str) -> dict[str, str]:
    """A minimal environment: nothing from the shell leaks into the node (mDNS off unless ``extra`` says)."""
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "THATDAM_STATE_DIR": str(state_dir), "HOME": str(state_dir),
           "THATDAM_MDNS": "off"}
    env.update(extra)
    return env


class Node:
    """One ``thatdam up`` process with a fixed node id (so a restart is the same node) and its log file."""

    def __init__(self, state_dir: Path, node_id: str, env: dict[str, str]) -> None:
        self.state_dir, self.node_id, self.env = state_dir, node_id, env
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (state_dir / "node_id").write_text(node_id + "\n")
        self.log_path = state_dir.parent / f"{state_dir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_mark = 0

    def start(self) -> Node:
        """(Re)start the process; the log is appended to, so ``log_size`` marks where this run began."""
        assert not self.alive, f"{self} is still running"
        self.starts += 1
        self.log_mark = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([str(BIN / "thatdam"), "up"], env=node_env(self.state_dir, **self.env),
                                         stdout=log, stderr=log)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        """This run's log so far."""
        with self.log_path.open("rb") as handle:
            handle.seek(self.log_mark)
            return handle.read().decode(errors="replace")

    async def wait_log(self, needle: str, timeout: float = 20.0) -> None:
        def seen() -> bool:
            if not self.alive and needle not in self.log():
                raise RuntimeError(f"{self} exited before logging {needle!r}:\n{self.log()[-2000:]}")
            return needle in self.log()
        await wait_until(seen, timeout, f"{needle!r} in the log of {self.node_id}", poll=0.05)

    def send(self, sig: int) -> float:
        """Send ``sig``; returns the monotonic time it was sent."""
        os.kill(self.pid, sig)
        return time.monotonic()

    async def wait_exit(self, timeout: float = 15.0) -> int:
        await wait_until(lambda: not self.alive, timeout, f"exit of {self.node_id}", poll=0.02)
        assert self.proc is not None
        return int(self.proc.returncode)

    def kill(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def __repr__(self) -> str:
        return f"<Node {self.node_id} pid={self.proc.pid if self.proc else None} alive={self.alive}>"


def cluster_env(amqp_url: str, prefix: str, ttl: float, **extra: str) -> dict[str, str]:
    """A cluster node on the bench's prefix (exchange ``<prefix>``, Redis keys ``<prefix>:*``)."""
    env = {"THATDAM_AMQP_URL": amqp_url, "THATDAM_REDIS_URL": REDIS_URL, "THATDAM_PREFIX": prefix,
           "THATDAM_LEASE_TTL": f"{ttl:g}", "THATDAM_LOG_LEVEL": "INFO", "THATDAM_CONNECT_TIMEOUT": "3"}
    env.update(extra)
    return env


# -- what the nodes publish -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One message as the event log received it (``at``: bench monotonic time of receipt)."""

    at: float
    key: str
    event: dict[str, Any]

    @property
    def data(self) -> dict[str, Any]:
        return self.event["data"]  # type: ignore[no-any-return]

    @property
    def sent_at(self) -> float:
        """When the sender stamped it (the envelope's ``time``), on the bench's monotonic clock."""
        return monotonic_of(datetime.fromisoformat(self.event["time"]).timestamp())


class EventLog:
    """A plain aio-pika consumer bound to ``pattern`` on the bench's exchange, recording what it receives."""

    def __init__(self, amqp_url: str, prefix: str, pattern: str = "#") -> None:
        self.amqp_url, self.prefix, self.pattern = amqp_url, prefix, pattern
        self.seen: list[Seen] = []
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None

    async def start(self) -> None:
        self._connection = await aio_pika.connect_robust(self.amqp_url)
        channel = await self._connection.channel()
        exchange = await channel.declare_exchange(self.prefix, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, self.pattern)
        await queue.consume(self._record, no_ack=True)

    async def _record(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.seen.append(Seen(time.monotonic(), message.routing_key or "", orjson.loads(message.body)))

    def of(self, pattern: str, since: float = 0.0) -> list[Seen]:
        return [s for s in self.seen if s.at >= since and topic_matches(pattern, s.key)]

    async def first(self, pattern: str, since: float = 0.0, timeout: float = 10.0,
                    where: Callable[[Seen], bool] = lambda _s: True) -> Seen:
        """The first matching message received at or after ``since``, waiting up to ``timeout`` seconds."""
        def found() -> list[Seen]:
            return [s for s in self.of(pattern, since) if where(s)]
        await wait_until(lambda: bool(found()), timeout, f"{pattern} on the bus")
        return found()[0]

    async def aclose(self) -> None:
        if self._connection is not None:
            await self._connection.close()


async def cleanup(amqp_url: str, prefix: str) -> None:
    """Delete what nodes declare under ``prefix``: the recorder stream, the dead-letter queue, both exchanges,
    and every Redis key ``<prefix>:*`` (lease, epoch)."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for queue in (f"{prefix}.recorder", f"{prefix}.dead-letters"):
            await channel.queue_delete(queue)
        for exchange in (prefix, f"{prefix}.dlx"):
            await channel.exchange_delete(exchange)
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def stop_all(nodes: list[Node]) -> None:
    """SIGKILL whatever is still running (the bench's own children only)."""
    for node in nodes:
        with contextlib.suppress(ProcessLookupError):
            node.kill()
