"""``Client``: publish from scripts. Intents are signed with the cluster key, sent confirmed and mandatory,
and their result can be awaited::

    async with Client.connect() as client:
        result = await client.request(CaptureStartIntent(node_id="n1", device="video0"), timeout=10)

``publish_intent`` is the same for plain (non-async) scripts. The result subscription is made *before* the
intent is published, so a fast node's answer cannot be missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterable
from typing import Any, Literal, overload

from thatdam_bus import topics
from thatdam_bus.config import Settings, load_settings
from thatdam_bus.envelope import Envelope, Payload, decode_raw
from thatdam_bus.errors import ContractError, IntentRejected, IntentTimeout
from thatdam_bus.events.intent import IntentResult, IntentStatus
from thatdam_bus.events.registry import CHANNELS
from thatdam_bus.publisher import Bus
from thatdam_bus.security.keys import ClusterKey, signing_key
from thatdam_bus.security.signing import sign_envelope
from thatdam_bus.transports import connect_tool_transport
from thatdam_bus.transports.base import ACK, Delivery, Outcome, QueueSpec, Transport

EXACT_BINDINGS_UP_TO = 32
"""Wait on up to this many intents with one binding each; more share ``intent.result.*`` and are filtered."""


def model_for_routing_key(routing_key: str) -> type[Payload]:
    """The payload model of the channel ``routing_key`` belongs to (``ContractError`` if none)."""
    for pattern, model, _ in CHANNELS:
        if topics.topic_matches(pattern, routing_key):
            return model
    raise ContractError(f"no channel matches routing key {routing_key!r} (see thatdam_bus.events.registry)")


def routing_key_for(payload: Payload) -> str:
    """The routing key of a payload whose channel has no wildcard (every intent); else say which to pass."""
    for pattern, model, _ in CHANNELS:
        if model is type(payload) and "*" not in pattern and "#" not in pattern:
            return pattern
    raise ContractError(f"{type(payload).__name__} has no fixed routing key: pass routing_key=")


class ResultWaiter:
    """Ephemeral subscription to ``intent.result.<id>`` for known ids; keeps each id's first final result."""

    def __init__(self, intent_ids: Iterable[str]) -> None:
        loop = asyncio.get_running_loop()
        self.futures: dict[str, asyncio.Future[IntentResult]] = {i: loop.create_future() for i in intent_ids}

    @property
    def spec(self) -> QueueSpec:
        ids = list(self.futures)
        if len(ids) > EXACT_BINDINGS_UP_TO:
            return QueueSpec(patterns=(topics.Patterns.INTENT_RESULTS,), prefetch=256)
        return QueueSpec(patterns=tuple(topics.intent_result(i) for i in ids), prefetch=256)

    async def __call__(self, delivery: Delivery) -> Outcome:
        """Anything that is not a final result for one of our ids is ignored (acked), never fatal."""
        try:
            raw = decode_raw(delivery.body)
            if raw.type != IntentResult.event_type:
                return ACK
            result = IntentResult.model_validate(raw.data)
        except (ContractError, ValueError):
            return ACK
        future = self.futures.get(result.intent_id)
        if future is not None and not future.done() and result.status is not IntentStatus.ACCEPTED:
            future.set_result(result)
        return ACK

    async def wait(self, intent_id: str, timeout: float) -> IntentResult:
        """The final result, or ``IntentTimeout``."""
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(self.futures[intent_id])
        except TimeoutError:
            raise IntentTimeout(intent_id, timeout) from None

    async def wait_all(self, timeout: float) -> dict[str, IntentResult]:
        """Whatever results arrive within ``timeout``; ids missing from the answer timed out."""
        pending = [f for f in self.futures.values() if not f.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        return {i: f.result() for i, f in self.futures.items() if f.done()}


def raise_for(result: IntentResult) -> IntentResult:
    """``done`` passes through; ``rejected`` becomes ``IntentRejected`` with the node's reason."""
    if result.status is IntentStatus.REJECTED:
        raise IntentRejected(result.intent_id, result.reason or "no reason given", result.node_id)
    return result


class Client:
    """A tool's connection to the bus: its own identity (``thatdam://<cluster>/<host>/client``), the cluster
    key for intents (read when first needed), and waiting on results."""

    def __init__(self, transport: Transport, *, settings: Settings | None = None,
                 key: ClusterKey | None = None) -> None:
        self.settings = settings if settings is not None else load_settings()
        host = topics.device_word(socket.gethostname())
        self.bus = Bus(transport, cluster=self.settings.cluster, node_id=host, service="client")
        self._key = key

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, settings: Settings | None = None) -> AsyncIterator[Client]:
        """RabbitMQ if ``THATDAM_AMQP_URL`` is set and up, else a solo node's socket. Closed on exit."""
        settings = settings if settings is not None else load_settings()
        transport = await connect_tool_transport(settings)
        try:
            yield cls(transport, settings=settings)
        finally:
            await transport.aclose()

    @property
    def key(self) -> ClusterKey:
        """The signing key; ``ConfigError`` naming ``THATDAM_CLUSTER_KEY`` when none is configured."""
        if self._key is None:
            self._key = signing_key(self.settings)
        return self._key

    def envelope(self, payload: Payload, routing_key: str) -> Envelope[Any]:
        """A fresh envelope for ``routing_key``, signed when the payload is an intent."""
        envelope = self.bus.envelope(payload)
        if payload.signed:
            envelope = sign_envelope(envelope, routing_key, self.key, ttl_s=self.settings.intent_ttl_s)
        return envelope

    async def send(self, envelope: Envelope[Any], routing_key: str) -> None:
        """Persistent, confirmed and mandatory: a refused or unroutable publish raises ``PublishRefused``."""
        await self.bus.send(envelope, routing_key, durable=True, mandatory=True)

    async def publish(self, payload: Payload, routing_key: str | None = None) -> Envelope[Any]:
        """Publish without waiting for a result; returns the envelope sent (its ``id`` names the result)."""
        key = routing_key or routing_key_for(payload)
        envelope = self.envelope(payload, key)
        await self.send(envelope, key)
        return envelope

    @contextlib.asynccontextmanager
    async def awaiting(self, intent_ids: Iterable[str]) -> AsyncIterator[ResultWaiter]:
        """Subscribe to the results of ``intent_ids`` (live on entry); unsubscribe on exit."""
        waiter = ResultWaiter(intent_ids)
        subscription = await self.bus.transport.subscribe(waiter.spec, waiter)
        try:
            yield waiter
        finally:
            await subscription.cancel()

    @overload
    async def request(self, payload: Payload, *, routing_key: str | None = None, wait: Literal[True] = True,
                      timeout: float = 10.0) -> IntentResult: ...
    @overload
    async def request(self, payload: Payload, *, routing_key: str | None = None, wait: Literal[False],
                      timeout: float = 10.0) -> str: ...
    @overload
    async def request(self, payload: Payload, *, routing_key: str | None = None, wait: bool,
                      timeout: float = 10.0) -> IntentResult | str: ...

    async def request(self, payload: Payload, *, routing_key: str | None = None, wait: bool = True,
                      timeout: float = 10.0) -> IntentResult | str:
        """Publish an intent. ``wait=False``: return its id. ``wait=True``: return the ``done`` result, raise
        ``IntentRejected`` (with the reason) or ``IntentTimeout`` after ``timeout`` seconds."""
        if wait and not payload.signed:
            raise ContractError(f"{type(payload).__name__} is not an intent: no result will come to wait for")
        key = routing_key or routing_key_for(payload)
        envelope = self.envelope(payload, key)
        if not wait:
            await self.send(envelope, key)
            return envelope.id
        async with self.awaiting([envelope.id]) as waiter:
            await self.send(envelope, key)
            return raise_for(await waiter.wait(envelope.id, timeout))

    def __repr__(self) -> str:
        return f"<Client source={self.bus.source} transport={self.bus.transport!r}>"


@overload
def publish_intent(payload: Payload, *, wait: Literal[True] = True, timeout: float = 10.0,
                   routing_key: str | None = None, settings: Settings | None = None) -> IntentResult: ...
@overload
def publish_intent(payload: Payload, *, wait: Literal[False], timeout: float = 10.0,
                   routing_key: str | None = None, settings: Settings | None = None) -> str: ...


def publish_intent(payload: Payload, *, wait: bool = True, timeout: float = 10.0,
                   routing_key: str | None = None, settings: Settings | None = None) -> IntentResult | str:
    """``Client.request`` for plain scripts: connects, publishes, waits, disconnects (one ``asyncio.run``)."""
    if _loop_is_running():
        raise TypeError("publish_intent() blocks; in async code use `async with Client.connect() as client`")

    async def run() -> IntentResult | str:
        async with Client.connect(settings) as client:
            return await client.request(payload, routing_key=routing_key, wait=wait, timeout=timeout)

    return asyncio.run(run())


def _loop_is_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
