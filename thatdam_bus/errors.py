"""One error tree for the whole package.

Callers catch ``ThatdamError`` (or a branch of it); backend exceptions (aio-pika, redis, OSError) are translated
at the transport boundary with ``raise ... from`` so the cause survives::

    ThatdamError
    ├── ConfigError (also ValueError)         invalid THATDAM_* setting or URL
    ├── ContractError (also ValueError)       a message that does not fit the envelope / event models
    │   ├── DecodeError                       bytes that are not a JSON envelope
    │   └── SchemaError                       an envelope whose data fails its model
    ├── TransportError (also ConnectionError) the broker could not be reached or refused an operation
    │   ├── TransportUnavailable              no connection (first connect failed, or lost and not yet back)
    │   ├── PublishRefused                    broker nacked or returned (unroutable) a confirmed publish
    │   │   └── OutboxFull                    broker unreachable and the on-disk outbox is full
    │   └── TransportClosed                   the transport was used after aclose()
    ├── IntentError                           a published intent did not end in ``done``
    │   ├── IntentRejected                    a node refused it (``reason``: bad signature, policy, ...)
    │   └── IntentTimeout (also TimeoutError) no result arrived before the deadline
    └── HandlerFate                           raised by handlers to choose a message's fate explicitly
        ├── Reject                            dead-letter now, with a reason
        └── Retry                             requeue for another attempt (bounded by max attempts)
"""

from __future__ import annotations


class ThatdamError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(ThatdamError, ValueError):
    """A setting or URL is invalid; the message is one line fit for a terminal."""


class ContractError(ThatdamError, ValueError):
    """A message does not fit the contract (envelope or payload model)."""


class DecodeError(ContractError):
    """The body is not a decodable JSON envelope."""


class SchemaError(ContractError):
    """The envelope decoded but its fields or data fail validation."""


class TransportError(ThatdamError, ConnectionError):
    """A transport operation failed."""


class TransportUnavailable(TransportError):
    """The broker is not reachable right now."""


class PublishRefused(TransportError):
    """The broker refused a confirmed publish (nack, or returned as unroutable)."""


class OutboxFull(PublishRefused):
    """A durable event could not be sent nor kept: the broker is unreachable and the outbox is at its bound.
    Raised to the producer (never a silent drop); it may retry later or shed its own load."""


class TransportClosed(TransportError):
    """The transport was used after it was closed."""


class IntentError(ThatdamError):
    """A published intent did not end in ``done``. ``intent_id`` is the envelope id it was sent with."""

    def __init__(self, message: str, intent_id: str) -> None:
        super().__init__(message)
        self.intent_id = intent_id


class IntentRejected(IntentError):
    """A node refused the intent; ``reason`` is what it said and ``node_id`` who said it."""

    def __init__(self, intent_id: str, reason: str, node_id: str) -> None:
        super().__init__(f"intent {intent_id} rejected by node {node_id}: {reason}", intent_id)
        self.reason = reason
        self.node_id = node_id


class IntentTimeout(IntentError, TimeoutError):
    """No result for the intent arrived in time: no node took it, or its result was lost."""

    def __init__(self, intent_id: str, timeout: float) -> None:
        super().__init__(f"no result for intent {intent_id} within {timeout:g}s", intent_id)
        self.timeout = timeout


class HandlerFate(ThatdamError):
    """Base of the exceptions a handler raises to decide what happens to its message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Reject(HandlerFate):
    """Dead-letter the message now; ``reason`` travels in the dead-letter record's headers."""


class Retry(HandlerFate):
    """Requeue the message; after the configured number of attempts it is dead-lettered instead."""
