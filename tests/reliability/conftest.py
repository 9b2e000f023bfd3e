"""Fixtures of the fault suite: a private RabbitMQ node that tests may crash (the shared one is never touched), and
a durable queue taking one node's frames (the outbox tests)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import ON_CI, delete_amqp_prefix
from tests.reliability.private_broker import PrivateBroker, find_server
from tests.support import Collector
from tests.transports.conftest import kit  # every transport, for the limits tests
from thatdam_bus.transports.amqp import AmqpTransport
from thatdam_bus.transports.base import QueueKind, QueueSpec

__all__ = ["frames", "kit", "private_broker"]


@pytest.fixture
async def frames(rabbitmq: str, prefix: str) -> AsyncIterator[tuple[Collector, str]]:
    """A durable queue on the shared broker taking one node's frames; yields the collector and the node id."""
    node_id = f"frames-{uuid.uuid4().hex[:6]}"
    transport = AmqpTransport(rabbitmq, prefix=prefix)
    await transport.start()
    got = Collector()
    spec = QueueSpec((f"frame.{node_id}.cam.ready",), kind=QueueKind.DURABLE, name="frames", prefetch=512)
    await transport.subscribe(spec, got)
    try:
        yield got, node_id
    finally:
        await transport.aclose()
        queues = [f"{prefix}.frames", *(f"{prefix}.capture.{verb}.{node_id}" for verb in ("start", "stop"))]
        await delete_amqp_prefix(rabbitmq, prefix, queues)


@pytest.fixture
async def private_broker(tmp_path: Path) -> AsyncIterator[PrivateBroker]:
    """A started private node, halted (or killed) at teardown; a skip locally without RabbitMQ installed."""
    server = find_server()
    if server is None:
        if ON_CI:
            pytest.fail("rabbitmq-server is not installed (CI=true: the broker-crash test must run)")
        pytest.skip("rabbitmq-server is not installed: no private node to crash")
    broker = PrivateBroker(server, tmp_path / "rabbitmq")
    broker.start()
    try:
        await broker.ready()
        yield broker
    finally:
        broker.stop()
