"""The transport contract: the one small interface both the RabbitMQ and the embedded broker implement.

A transport moves opaque bytes between a routing key and binding patterns on one topic exchange, with two queue
classes and an explicit fate for every delivery. It knows nothing of envelopes or handlers (that is
``thatdam_bus.dispatch``); it owns connection, declaration, recovery, confirms and dead-lettering.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

REASON_HEADER = "x-thatdam-reason"
ORIGINAL_KEY_HEADER = "x-thatdam-routing-key"
QUEUE_HEADER = "x-thatdam-queue"
ATTEMPTS_HEADER = "x-thatdam-attempts"


class QueueKind(StrEnum):
    """The two queue classes of architecture section 3."""

    DURABLE = "durable"
    """Named queue shared by competing consumers; survives restarts; persistent messages and confirms."""
    EPHEMERAL = "ephemeral"
    """Exclusive auto-delete queue per subscriber: fan-out views (heartbeats, leader events, bus-tail)."""


class Source(StrEnum):
    """Which exchange a subscription binds to."""

    EVENTS = "events"
    DEAD_LETTERS = "dead-letters"


@dataclass(frozen=True)
class QueueSpec:
    """What to consume: binding patterns, queue class, and for durable queues a service-scoped name."""

    patterns: tuple[str, ...]
    kind: QueueKind = QueueKind.EPHEMERAL
    name: str | None = None
    prefetch: int = 64
    source: Source = Source.EVENTS

    def __post_init__(self) -> None:
        if not self.patterns:
            raise ValueError("a subscription needs at least one binding pattern")
        if self.kind is QueueKind.DURABLE and not self.name:
            raise ValueError("a durable queue needs a name (the service that owns the work)")
        if self.prefetch < 1:
            raise ValueError("prefetch must be >= 1")


@dataclass(frozen=True)
class Delivery:
    """One message handed to a subscriber. ``attempt`` is 1 on first delivery, higher on redelivery."""

    routing_key: str
    body: bytes
    headers: Mapping[str, Any] = field(default_factory=dict)
    attempt: int = 1
    queue: str = ""
    shared: dict[Any, Any] | None = field(default=None, compare=False, repr=False)
    """Scratch space common to every copy of one published message that a broker fanned out in this process
    (None otherwise): dispatch keeps the decoded event there, so subscribers of one model decode it once."""


class Fate(StrEnum):
    ACK = "ack"
    REQUEUE = "requeue"
    DEAD_LETTER = "dead-letter"


@dataclass(frozen=True)
class Outcome:
    """What the subscriber decided. ``reason`` is required for dead-letters and travels in ``REASON_HEADER``."""

    fate: Fate
    reason: str | None = None
    on_parked: Callable[[], None] | None = field(default=None, compare=False, repr=False)
    """Run by the transport (through ``parked``) once the message is stored as a dead letter: on a dead
    letter, and on a requeue that ``settle`` turns into one. What counts dead letters (dispatch's metrics)
    hangs here, so the count follows the dead-letter queue, not the decision: a dead letter that could not be
    stored comes back and is decided, and counted, once more only when it is stored. (A socket client has no
    word back from the server, so it runs it when it sends the dead letter; a connection lost before the
    server reads that frame makes the message come back, and the count one high.)"""

    def parked(self) -> None:
        """What a transport calls once it has stored this outcome's dead letter."""
        if self.on_parked is not None:
            self.on_parked()


ACK = Outcome(Fate.ACK)

DeliveryCallback = Callable[[Delivery], Awaitable[Outcome]]


def settle(outcome: Outcome, attempt: int, max_attempts: int) -> Outcome:
    """Bound retries: a requeue on the last allowed attempt becomes a dead-letter, so a poison message never
    loops for ever. Shared by every transport so the rule is the same everywhere."""
    if outcome.fate is Fate.REQUEUE and attempt >= max_attempts:
        return Outcome(Fate.DEAD_LETTER, f"gave up after {attempt} attempts: {outcome.reason or 'requeued'}",
                       outcome.on_parked)
    return outcome


def outcome_of_crash(exc: BaseException) -> Outcome:
    """A callback that raised instead of returning an outcome: retry it (bounded by ``settle``)."""
    return Outcome(Fate.REQUEUE, f"subscriber raised {type(exc).__name__}: {exc}")


def dead_letter_headers(delivery: Delivery, reason: str) -> dict[str, Any]:
    """Headers of a dead-letter record: the original headers plus why, from where, after how many attempts."""
    headers = dict(delivery.headers)
    headers[REASON_HEADER] = reason[:1024]
    headers[ORIGINAL_KEY_HEADER] = delivery.routing_key
    headers[QUEUE_HEADER] = delivery.queue
    headers[ATTEMPTS_HEADER] = delivery.attempt
    return headers


@dataclass(frozen=True)
class Capabilities:
    """What a transport guarantees; the node checks these at start-up (tooz-style characteristics)."""

    scheme: str
    cross_host: bool
    survives_restart: bool
    publisher_confirms: bool


@runtime_checkable
class Subscription(Protocol):
    """A live consumer. ``cancel`` stops delivery; an ephemeral queue disappears with it."""

    @property
    def queue(self) -> str: ...

    async def cancel(self) -> None: ...


@runtime_checkable
class LossySubscription(Subscription, Protocol):
    """A consumer whose queue drops its oldest messages when full (a fan-out view), and counts what it
    dropped, so a consumer that must account for every message (the solo recorder) can say where it lost
    some."""

    @property
    def dropped(self) -> int: ...


class Transport(Protocol):
    """Publish bytes under a routing key; consume them by binding pattern."""

    capabilities: Capabilities

    async def start(self) -> None:
        """Connect and declare the exchange topology. Fails fast (``TransportUnavailable``) on first connect."""

    async def publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        headers: Mapping[str, Any] | None = None,
        durable: bool = False,
        mandatory: bool = False,
    ) -> None:
        """Publish one message. ``durable``: persistent and confirmed (returns once the broker has it).
        ``mandatory``: an unroutable message raises ``PublishRefused`` instead of vanishing."""

    async def subscribe(self, spec: QueueSpec, callback: DeliveryCallback) -> Subscription:
        """Declare and bind the queue, start consuming; returns once the binding is live."""

    async def aclose(self) -> None:
        """Cancel every subscription and disconnect. Idempotent."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


@runtime_checkable
class NetworkTransport(Transport, Protocol):
    """A transport whose broker is across a network, which it can lose: the node watches ``connected`` and,
    once it knows the broker is out of reach, ``abandon``s it (nothing waits for the broker after that; the
    ``aclose`` that follows only retires the dead connection) and moves to solo."""

    @property
    def connected(self) -> bool: ...

    def abandon(self) -> None: ...
