"""Dead letters are counted when the transport has stored them, not when they are decided.

* RabbitMQ: the first attempt to park a rejected message fails (the dead-letter publish raises, as when the
  channel breaks under it); the message goes back, is rejected again and parked: one record in the dead-letter
  queue, and the counter moved by one, not two.
* Embedded broker: a handler that always fails is retried up to the transport's ``max_attempts`` and then
  parked; ``gave_up`` is counted once, whatever the dispatch knows of the transport's bound.
* Socket client: the same through a solo node's socket, where the server applies the bound: the client learns
  it from the server's hello and counts the dead letter it sends.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from tests.conftest import delete_amqp_prefix
from tests.support import Collector, queue_until, wait_until
from thatdam_bus import CaptureStarted, Envelope, HandlerContext, QueueKind, Reject, Role, Service
from thatdam_bus.dispatch import make_callback
from thatdam_bus.publisher import Bus
from thatdam_bus.service import HandlerSpec
from thatdam_bus.transports.amqp import AmqpTransport
from thatdam_bus.transports.amqp_consumer import AmqpSubscription
from thatdam_bus.transports.base import QueueSpec, Source, Transport
from thatdam_bus.transports.embedded import EmbeddedTransport
from thatdam_bus.transports.socket_client import SocketTransport

KEY = "capture.dl-node.cam0.started"
service = Service("dlcount", roles={Role.SOLO, Role.LEADER, Role.WORKER})
runs: list[str] = []


@service.on("capture.*.*.started", queue=QueueKind.DURABLE, prefetch=1)
async def refuse(event: Envelope[CaptureStarted], ctx: HandlerContext) -> None:
    runs.append(f"refuse {ctx.attempt}")
    raise Reject("refused by the test")


@service.on("capture.*.*.started", queue=QueueKind.DURABLE, prefetch=1)
async def fail(event: Envelope[CaptureStarted], ctx: HandlerContext) -> None:
    runs.append(f"fail {ctx.attempt}")
    raise RuntimeError("always fails")


def handler(name: str) -> HandlerSpec:
    [spec] = [spec for spec in service.handlers if spec.name == name]
    return spec


def dead_lettered(spec: HandlerSpec, reason: str) -> float:
    labels = {"handler": spec.qualified_name, "channel": ",".join(spec.queue.patterns), "reason": reason}
    return REGISTRY.get_sample_value("thatdam_messages_dead_lettered_total", labels) or 0.0


async def subscribe(transport: Transport, bus: Bus, spec: HandlerSpec) -> None:
    def context(delivery: Any) -> HandlerContext:
        return HandlerContext(bus, "dl-node", delivery.routing_key, delivery.attempt, logging.getLogger("test"))

    await transport.subscribe(spec.queue, make_callback(spec, context, max_bytes=65536))


async def publish_one(bus: Bus) -> None:
    await bus.publish(CaptureStarted(node_id="dl-node", device="cam0", source="test://x"), KEY)


@pytest.fixture(autouse=True)
def fresh_runs() -> None:
    runs.clear()


async def test_a_dead_letter_whose_parking_failed_once_is_counted_once(
    rabbitmq: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    park = AmqpSubscription._publish_dead_letter
    failures = [RuntimeError("the channel broke while parking")]

    async def park_failing_once(self: AmqpSubscription, *args: Any) -> None:
        if failures:
            raise failures.pop()
        await park(self, *args)

    monkeypatch.setattr(AmqpSubscription, "_publish_dead_letter", park_failing_once)
    spec = handler("refuse")
    before = dead_lettered(spec, "rejected")
    transport = AmqpTransport(rabbitmq, prefix=prefix, max_attempts=5)
    try:
        await transport.start()
        bus = Bus(transport, cluster="test", node_id="dl-node")
        await subscribe(transport, bus, spec)
        await publish_one(bus)
        await queue_until(rabbitmq, f"{prefix}.dead-letters", lambda messages, _: messages >= 1)
        await wait_until(lambda: dead_lettered(spec, "rejected") > before, what="the dead letter counted")
    finally:
        await transport.aclose()
        await delete_amqp_prefix(rabbitmq, prefix, [f"{prefix}.{spec.queue.name}"])
    assert runs == ["refuse 1", "refuse 2"], "the failed parking sent it back, and it was decided again"
    assert not failures
    assert dead_lettered(spec, "rejected") - before == 1


async def parked_after_giving_up(transport: Transport, publisher: Bus, spec: HandlerSpec,
                                 dead: Collector, started: Callable[[], Awaitable[None]]) -> float:
    before = dead_lettered(spec, "gave_up")
    await started()
    await publish_one(publisher)
    await dead.wait_count(1)
    await wait_until(lambda: dead_lettered(spec, "gave_up") > before, what="the gave-up dead letter counted")
    return dead_lettered(spec, "gave_up") - before


async def test_giving_up_is_counted_once_by_the_transport_bound_on_the_embedded_broker() -> None:
    spec = handler("fail")
    async with EmbeddedTransport(prefix="dl", max_attempts=3) as transport:
        bus, dead = Bus(transport, cluster="test", node_id="dl-node"), Collector()
        await transport.subscribe(QueueSpec(patterns=("#",), source=Source.DEAD_LETTERS), dead)
        counted = await parked_after_giving_up(transport, bus, spec, dead, lambda: subscribe(transport, bus, spec))
    assert runs == ["fail 1", "fail 2", "fail 3"]
    assert counted == 1
    assert dead.got[0].headers["x-thatdam-reason"].startswith("gave up after 3 attempts")


async def test_giving_up_is_counted_once_by_a_socket_client(tmp_path: Path) -> None:
    spec = handler("fail")
    async with EmbeddedTransport(prefix="dl", max_attempts=2, socket_path=tmp_path / "bus.sock") as broker:
        bus, dead = Bus(broker, cluster="test", node_id="dl-node"), Collector()
        await broker.subscribe(QueueSpec(patterns=("#",), source=Source.DEAD_LETTERS), dead)
        async with SocketTransport(tmp_path / "bus.sock", prefix="dl") as client:
            client_bus = Bus(client, cluster="test", node_id="dl-node")
            counted = await parked_after_giving_up(client, bus, spec, dead,
                                                   lambda: subscribe(client, client_bus, spec))
            assert client.max_attempts == 2, "learnt from the server's hello"
    assert runs == ["fail 1", "fail 2"]
    assert counted == 1
