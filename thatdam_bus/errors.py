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
    │   └── TransportClosed                   the transport was used after aclose()
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


class TransportClosed(TransportError):
    """The transport was used after it was closed."""


class HandlerFate(ThatdamError):
    """Base of the exceptions a handler raises to decide what happens to its message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Reject(HandlerFate):
    """Dead-letter the message now; ``reason`` travels in the dead-letter record's headers."""


class Retry(HandlerFate):
    """Requeue the message; after the configured number of attempts it is dead-lettered instead."""
