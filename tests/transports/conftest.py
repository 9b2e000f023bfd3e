"""The transport fixture: every conformance test runs against each implementation of the contract."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.conftest import delete_amqp_prefix
from thatdam_bus.transports.base import QueueKind, QueueSpec, Transport
from thatdam_bus.transports.batching import BatchPolicy

KINDS = ["embedded", "socket", "amqp", "amqp-batched"]
BATCH_EVERYTHING = BatchPolicy(patterns=("#",), max_events=16, linger=0.005)
"""``amqp-batched``: every non-mandatory publish is batched, so the whole contract suite runs over batches."""


class TransportKit:
    """Makes connected transports of one kind that share one broker (one exchange prefix)."""

    def __init__(self, kind: str, prefix: str, state_dir: Path, amqp_url: str | None,
                 register_queue: Callable[[str], None] | None) -> None:
        self.kind = kind
        self.prefix = prefix
        self.state_dir = state_dir
        self.amqp_url = amqp_url
        self._register_queue = register_queue
        self._open: list[Transport] = []
        self._host: Transport | None = None

    async def _embedded_host(self) -> Transport:
        from thatdam_bus.transports.embedded import EmbeddedTransport

        if self._host is None:
            self._host = EmbeddedTransport(prefix=self.prefix, socket_path=self.state_dir / "bus.sock")
            await self._host.start()
            self._open.append(self._host)
        return self._host

    async def new(self, max_attempts: int = 3) -> Transport:
        """A started transport. For ``embedded`` every call returns the same in-process broker."""
        transport: Transport
        if self.kind.startswith("amqp"):
            from thatdam_bus.transports.amqp import AmqpTransport

            assert self.amqp_url is not None
            batch = BATCH_EVERYTHING if self.kind == "amqp-batched" else None
            transport = AmqpTransport(self.amqp_url, prefix=self.prefix, max_attempts=max_attempts, batch=batch)
            await transport.start()
        elif self.kind == "embedded":
            return await self._embedded_host()
        else:
            from thatdam_bus.transports.socket_client import SocketTransport

            await self._embedded_host()
            transport = SocketTransport(self.state_dir / "bus.sock", prefix=self.prefix)
            await transport.start()
        self._open.append(transport)
        return transport

    def durable(self, name: str, *patterns: str, prefetch: int = 64) -> QueueSpec:
        if self._register_queue is not None:
            self._register_queue(f"{self.prefix}.{name}")
        return QueueSpec(patterns=patterns, kind=QueueKind.DURABLE, name=name, prefetch=prefetch)

    async def aclose(self) -> None:
        for transport in reversed(self._open):
            await transport.aclose()


@pytest.fixture(params=KINDS)
async def kit(request: pytest.FixtureRequest, prefix: str, state_dir: Path) -> AsyncIterator[TransportKit]:
    amqp_url = request.getfixturevalue("rabbitmq") if request.param.startswith("amqp") else None
    declared: list[str] = []
    kit = TransportKit(request.param, prefix, state_dir, amqp_url, declared.append)
    try:
        yield kit
    finally:
        await kit.aclose()
        if amqp_url is not None:
            await delete_amqp_prefix(amqp_url, prefix, declared)
