"""The transport kit (embedded, socket, amqp) of the conformance suite, so intents are tested on each."""

from tests.transports.conftest import kit

__all__ = ["kit"]
