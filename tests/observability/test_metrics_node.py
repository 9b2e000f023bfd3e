"""The node gauges move on the real code paths: a leader elected through Redis shows its role, epoch and lease
renewals, and the broker's consumer count of its durable queue; the queue series follow the subscriptions;
the outbox depth is what the outbox file holds while RabbitMQ is out of reach, and on a solo node only the
events no broker has, not the journal's copies of delivered ones."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from tests.frames_bus.support import start_node
from tests.nodes import NodeProcess
from tests.observability.support import free_port
from tests.observability.test_metrics_amqp import Scrape, scrape_until
from tests.support import Collector, wait_until
from thatdam_bus import FrameReady
from thatdam_bus.metrics.health import NodeHealth
from thatdam_bus.node.journal import SoloJournal
from thatdam_bus.outbox import OUTBOX_FILE, Outbox
from thatdam_bus.publisher import Bus
from thatdam_bus.transports.amqp import AmqpTransport
from thatdam_bus.transports.base import QueueKind, QueueSpec
from thatdam_bus.transports.embedded import EmbeddedTransport

NODE = "metrics-leader"


def gauge(name: str, **labels: str) -> float | None:
    """This process's value of a series (None: no such series)."""
    return REGISTRY.get_sample_value(name, labels)


def frame(seq: int) -> FrameReady:
    return FrameReady(node_id="n", device="cam0", seq=seq, keyframe=True, width=64, height=36,
                      captured_at=datetime.now(UTC), uri=f"file:///nowhere/{seq}.jpg", sha256="0" * 64, size_bytes=1)


@pytest.fixture
def leader(cluster_env: dict[str, str], amqp_cleanup: Callable[[str], None], prefix: str,
           tmp_path: Path) -> Iterator[tuple[NodeProcess, int]]:
    amqp_cleanup(f"{prefix}.indexer.index")
    port = free_port()
    node = start_node(tmp_path / "node", NODE, **cluster_env, THATDAM_SERVICES="indexer",
                      THATDAM_METRICS_PORT=str(port), THATDAM_LEASE_TTL="1.5")
    try:
        yield node, port
    finally:
        node.kill()


async def elected_epoch(redis_url: str, prefix: str) -> int:
    """The epoch of the term the lease in Redis grants ``NODE`` (``<node_id>:<epoch>``), once it holds it."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        async with asyncio.timeout(60):
            while not str(held := await client.get(f"{prefix}:default:leader")).startswith(f"{NODE}:"):
                await asyncio.sleep(0.1)
    finally:
        await client.aclose()
    return int(str(held).rpartition(":")[2])


async def test_a_leader_shows_its_role_epoch_lease_renewals_and_queue_consumers(
    leader: tuple[NodeProcess, int], redis_url: str, prefix: str
) -> None:
    _, port = leader
    epoch = await elected_epoch(redis_url, prefix)
    queue = f"{prefix}.indexer.index"

    def settled(now: Scrape) -> bool:
        return (now.get("thatdam_node_role", role="leader") == 1 and now.get("thatdam_leader_epoch") == epoch
                and now.get("thatdam_queue_consumers", queue=queue) == 1)

    first = await scrape_until(port, settled, f"role leader, epoch {epoch}, one consumer of indexer.index")
    assert [first.get("thatdam_node_role", role=r) for r in ("solo", "worker", "proxy")] == [0, 0, 0]
    renewed = first.get("thatdam_lease_renew_seconds_count")
    later = await scrape_until(port, lambda now: now.get("thatdam_lease_renew_seconds_count") >= renewed + 2,
                               "two more lease renewals", timeout=30)
    assert later.get("thatdam_lease_renew_seconds_sum") > first.get("thatdam_lease_renew_seconds_sum")
    assert later.get("thatdam_leader_epoch") == epoch, "no new term while the leader lives"


async def test_queue_consumer_series_follow_the_subscriptions_and_vanish_when_unknown(
    rabbitmq: str, prefix: str, amqp_cleanup: Callable[[str], None]
) -> None:
    names = ("obs.kept", "obs.cancelled")
    for name in names:
        amqp_cleanup(f"{prefix}.{name}")
    transport = AmqpTransport(rabbitmq, prefix=prefix)
    await transport.start()
    try:
        subscriptions = {name: await transport.subscribe(
            QueueSpec((f"obs.{name}",), kind=QueueKind.DURABLE, name=name), Collector()) for name in names}
        health = NodeHealth(Bus(transport, cluster="test", node_id="obs"))
        watch = asyncio.create_task(health.watch_consumers(interval_s=0.05))
        kept, cancelled = (f"{prefix}.{name}" for name in names)
        try:
            await wait_until(lambda: gauge("thatdam_queue_consumers", queue=kept) == 1
                             and gauge("thatdam_queue_consumers", queue=cancelled) == 1, 10, "both series at 1")
            await subscriptions["obs.cancelled"].cancel()
            await wait_until(lambda: gauge("thatdam_queue_consumers", queue=cancelled) is None, 10,
                             "the cancelled subscription's series removed")
            assert gauge("thatdam_queue_consumers", queue=kept) == 1
            transport.abandon()  # every check now fails at once
            await wait_until(lambda: gauge("thatdam_queue_consumers", queue=kept) is None, 10,
                             "no series once the broker does not answer")
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
    finally:
        await transport.aclose()


async def test_outbox_depth_is_what_the_outbox_holds_while_the_broker_is_unreachable(tmp_path: Path) -> None:
    closed_port = free_port()  # nothing listens there: the transport never connects
    outbox = Outbox(tmp_path)
    bus = Bus(AmqpTransport(f"amqp://guest:guest@127.0.0.1:{closed_port}/"), cluster="test", node_id="n",
              outbox=outbox)
    for seq in range(7):
        await bus.publish(frame(seq), "frame.n.cam0.ready")
    figures = NodeHealth(bus).figures("worker", 3)
    with sqlite3.connect(f"file:{tmp_path / OUTBOX_FILE}?mode=ro", uri=True) as db:
        in_file = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
    assert in_file == 7
    assert figures["outbox_depth"] == gauge("thatdam_outbox_depth") == 7
    assert gauge("thatdam_solo_journal_events") == 0
    assert gauge("thatdam_leader_epoch") == 3 and gauge("thatdam_node_role", role="worker") == 1


async def test_a_solo_nodes_depth_counts_only_the_events_no_broker_has(tmp_path: Path) -> None:
    held = Outbox(tmp_path)  # what a cluster session held before the node fell back to solo
    for n in range(2):
        await held.append("frame.n.cam0.ready", b"held %d" % n)
    journal = SoloJournal(tmp_path)
    for n in range(3):  # copies of events the embedded broker delivered
        await journal.append("frame.n.cam0.ready", b"copy %d" % n)
    health = NodeHealth(Bus(EmbeddedTransport(), cluster="test", node_id="n", journal=journal))
    assert health.figures("solo", 0)["outbox_depth"] is None, "unknown until counted, not 0"
    watch = asyncio.create_task(health.watch_consumers(interval_s=0.05))
    try:
        await wait_until(lambda: health.journal_backlog is not None, 10, "the journal's backlog counted")
        assert health.figures("solo", 0)["outbox_depth"] == gauge("thatdam_outbox_depth") == 2
        assert gauge("thatdam_solo_journal_events") == 5
        async with EmbeddedTransport() as cluster:  # joined: forwarded and forgotten
            await journal.replay(cluster)
        await wait_until(lambda: health.journal_backlog == 0, 10, "no backlog once the journal is replayed")
        assert health.figures("solo", 0)["outbox_depth"] == gauge("thatdam_outbox_depth") == 0
        assert not (tmp_path / OUTBOX_FILE).exists()
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
