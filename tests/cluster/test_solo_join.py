"""A node that starts with nothing reachable runs solo, and joins the cluster by itself once the infrastructure
appears: the same process, within two ttls, with the durable events it produced alone forwarded.

The process test cannot make a real node produce a durable event while solo (capture is not wired yet, and
``thatdam publish`` through the local socket goes to the embedded broker, not through the node's journal), so
the journal path is tested with a ``Node`` run in the test's event loop whose solo-only service publishes a
durable ``FrameReady`` through its ``ctx.bus``, as a capture handler will.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.cluster.conftest import FileWatcher
from tests.cluster.harness import TTL_S, Cluster, heal
from tests.support import wait_until
from tests.tcp_proxy import TcpProxy
from thatdam_bus import topics
from thatdam_bus.config import load_settings
from thatdam_bus.context import HandlerContext
from thatdam_bus.envelope import Envelope
from thatdam_bus.events.frame import FrameReady
from thatdam_bus.events.node import NodeJoined, Role
from thatdam_bus.node.runtime import Node
from thatdam_bus.service import Service

pytestmark = pytest.mark.broker
Figure = Callable[[str, Any], None]


async def cut_proxies(cluster: Cluster) -> tuple[TcpProxy, TcpProxy, dict[str, str]]:
    """Proxies in front of RabbitMQ and Redis, both cut, and the URLs that go through them."""
    amqp, redis = await cluster.proxy(5672), await cluster.proxy(6379)
    amqp.cut()
    redis.cut()
    urls = {"THATDAM_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{amqp.port}/", "THATDAM_REDIS_URL": redis.url()}
    return amqp, redis, urls


async def test_solo_node_joins_when_the_infrastructure_appears(cluster: Cluster, file_watch: FileWatcher,
                                                              figure: Figure) -> None:
    anchor = cluster.start()
    elected = await cluster.elected()
    amqp, redis, urls = await cut_proxies(cluster)
    alone = cluster.start(**urls)
    await wait_until(lambda: alone.role() == "solo", 10, "the unreachable node to run solo")
    view = alone.cluster_file()
    assert view is not None and view.services["bus"] == "embedded" and view.leader is not None
    assert view.leader.url.endswith(f"/{alone.node_id}") and view.leader.advertised_via == "local"
    pid = alone.pid

    healed_at = heal(amqp, redis)
    joined = await cluster.log.first(f"node.{alone.node_id}.joined", since=healed_at, timeout=TTL_S * 3)
    await cluster.settled(anchor.node_id)
    figure("joined_after_heal_s", round(joined.sent_at - healed_at, 3))
    assert joined.sent_at - healed_at < 2 * TTL_S
    assert alone.pid == pid and alone.alive, "joined without a restart"
    assert alone.role() == "worker" and elected.data["node_id"] == anchor.node_id
    view = alone.cluster_file()
    assert view is not None and view.services["bus"].startswith("amqp://")
    assert "infrastructure appeared: joining the cluster" in alone.log()
    states = file_watch.clean_report()["files"][str(alone.state_dir / "cluster.json")]["states"]
    assert (states[0][0], states[-1][0]) == ("solo", "worker"), states


def solo_producer(produced: list[Envelope[Any]]) -> Service:
    """A solo-only service that, when its node announces itself, publishes one durable frame event."""
    service = Service("solo-producer", roles={Role.SOLO})

    @service.on("node.*.joined")
    async def produce(event: Envelope[NodeJoined], ctx: HandlerContext) -> None:
        if event.data.node_id != ctx.node_id or produced:
            return
        frame = FrameReady(node_id=ctx.node_id, device="cam0", seq=1, captured_at=datetime.now(UTC), width=64,
                           height=48, uri="file:///tmp/frame.jpg", sha256=hashlib.sha256(b"f").hexdigest(),
                           size_bytes=1, keyframe=True)
        produced.append(await ctx.bus.publish(frame, topics.frame_ready(ctx.node_id, "cam0")))

    return service


async def test_durable_events_produced_while_solo_reach_the_cluster(cluster: Cluster, figure: Figure,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    amqp, redis, urls = await cut_proxies(cluster)
    state_dir = cluster.root / "inproc"
    for name in [n for n in os.environ if n.startswith("THATDAM_") or n in ("ROLE", "EVENT_PREFIX")]:
        monkeypatch.delenv(name)
    for name, value in {**cluster.env(**urls), "THATDAM_STATE_DIR": str(state_dir)}.items():
        monkeypatch.setenv(name, value)  # the same settings a `thatdam up` process would read
    settings = load_settings()
    assert settings.prefix == cluster.prefix
    produced: list[Envelope[Any]] = []
    state_dir.mkdir()
    (state_dir / "node_id").write_text(f"inproc-{uuid.uuid4().hex[:8]}\n")
    node = Node(settings, services=[solo_producer(produced)])
    cluster.node_ids.add(node.node_id)
    async with asyncio.TaskGroup() as group:
        task = group.create_task(node.run())
        try:
            await wait_until(lambda: len(node.journal) == 1, 10, "a durable event journaled while solo")
            assert node.role is Role.SOLO and produced
            healed_at = heal(amqp, redis)
            frame = await cluster.log.first("frame.*.*.ready", since=healed_at, timeout=TTL_S * 3)
            figure("solo_frame_on_cluster_after_heal_s", round(frame.at - healed_at, 3))
            assert frame.event["id"] == produced[0].id and frame.key == f"frame.{node.node_id}.cam0.ready"
            await wait_until(lambda: node.role is Role.LEADER, 5, "the joined node to lead (it is alone)")
            assert len(node.journal) == 0 and not node.journal.path.exists()
            assert len(cluster.log.of("frame.*.*.ready")) == 1, "forwarded once, not again by the cluster session"
        finally:
            node.stop()
    assert task.done() and task.exception() is None
