"""An in-test node for publishing tests: a ``HandlerHost`` on RabbitMQ that handles ``intent.capture.start``
with a verifier holding ``KEY`` (the CLI and the client are then run against it as a script would be)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from tests.support import Collector
from thatdam_bus import CaptureStartIntent, Envelope, HandlerContext, QueueKind, Reject, Role, Service
from thatdam_bus.node.services import HandlerHost
from thatdam_bus.publisher import Bus
from thatdam_bus.security import ClusterKey, IntentVerifier, Keyring
from thatdam_bus.transports.amqp import AmqpTransport
from thatdam_bus.transports.base import QueueSpec, Transport

KEY = "publishing test key"
ROUTE = "intent.capture.start"

service = Service("pubtest")


handled: list[Envelope[CaptureStartIntent]] = []


@dataclass
class IntentNode:
    bus: Bus
    prefix: str
    handled: list[Envelope[CaptureStartIntent]] = field(default_factory=lambda: handled)


async def silent_queue(transport: Transport, prefix: str, register: Callable[[str], None]) -> Collector:
    """A durable queue on ``intent.capture.start`` that takes intents and never answers them."""
    register(f"{prefix}.silent")
    got = Collector()
    await transport.subscribe(QueueSpec((ROUTE,), kind=QueueKind.DURABLE, name="silent"), got)
    return got


@service.on(ROUTE, queue=QueueKind.DURABLE, roles={Role.SOLO})
async def start_capture(event: Envelope[CaptureStartIntent], ctx: HandlerContext) -> None:
    """Records intents; refuses device 'forbidden'."""
    if event.data.device == "forbidden":
        raise Reject("device forbidden by policy")
    handled.append(event)


@contextlib.asynccontextmanager
async def transport_on(url: str, prefix: str) -> AsyncIterator[AmqpTransport]:
    transport = AmqpTransport(url, prefix=prefix)
    await transport.start()
    try:
        yield transport
    finally:
        await transport.aclose()


@contextlib.asynccontextmanager
async def intent_node(url: str, prefix: str, register: Callable[[str], None]) -> AsyncIterator[IntentNode]:
    """A node running the handler above; its durable queue is registered for cleanup."""
    async with transport_on(url, prefix) as transport:
        register(f"{prefix}.pubtest.start_capture")
        handled.clear()
        node = IntentNode(Bus(transport, cluster="test", node_id="n1"), prefix)
        host = HandlerHost(node.bus, [service], max_bytes=65536,
                           verifier=IntentVerifier(Keyring(ClusterKey.from_text(KEY))))
        await host.apply_role(Role.SOLO)
        try:
            yield node
        finally:
            await host.stop_all()
