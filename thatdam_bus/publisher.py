"""``Bus``: publish typed payloads as envelopes. The one place that stamps source, seq and epoch, and the one place
that decides where a durable event goes when the broker is away (the outbox, see ``thatdam_bus.outbox``)."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from typing import Any, Protocol

from thatdam_bus.envelope import (
    MAX_SOURCE_LENGTH,
    MAX_SUBJECT,
    MAX_TYPE_LENGTH,
    Envelope,
    Payload,
    assemble,
    encode,
    source_uri,
    typed_envelope,
)
from thatdam_bus.errors import PublishRefused, TransportError
from thatdam_bus.metrics.instruments import count_published
from thatdam_bus.outbox import Outbox, is_connected
from thatdam_bus.tracing import child_context, current_traceparent
from thatdam_bus.transports.base import Transport
from thatdam_bus.types import EpochSource

log = logging.getLogger("thatdam_bus.publisher")


class Journal(Protocol):
    """Somewhere durable events are also kept (the solo journal); ``append`` may refuse when full."""

    async def append(self, routing_key: str, body: bytes, headers: Mapping[str, Any] | None = None) -> None: ...


class Bus:
    """A transport plus an identity. Durability comes from the payload class, not from each call site."""

    def __init__(
        self,
        transport: Transport,
        *,
        cluster: str,
        node_id: str,
        service: str = "node",
        epoch: EpochSource = lambda: 0,
        journal: Journal | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        """``journal``: where a solo node also keeps its durable events until it joins a cluster.
        ``outbox``: where durable events wait while the broker is unreachable (``drain`` forwards them)."""
        self.transport = transport
        self.journal = journal
        self.outbox = outbox
        self.node_id = node_id
        self.source = source_uri(cluster, node_id, service)
        self._epoch = epoch
        self._seq = itertools.count(1)
        self._source_ok = 0 < len(self.source) <= MAX_SOURCE_LENGTH

    def envelope(self, payload: Payload, *, subject: str | None = None, **extensions: Any) -> Envelope[Any]:
        """Wrap ``payload`` in a fresh envelope (new id, time, next seq, current epoch, and a new span in the
        current trace: the handled event's inside a handler, else a new trace; see ``thatdam_bus.tracing``).

        The payload was validated when it was made; the fields the Bus sets itself (id, time, trace context,
        seq, source, type) are valid by construction, so a plain publish does not validate them again
        (``envelope.assemble``: a third of the cost). Caller-supplied extensions, or a value the Bus cannot
        vouch for, take pydantic's validating constructor, with its errors."""
        epoch = self._epoch()
        cls = typed_envelope(type(payload))
        fields = {"type": payload.event_type, "source": self.source, "subject": subject, "data": payload,
                  "epoch": epoch, "seq": next(self._seq)}
        fields["traceparent"], tracestate = child_context(current_traceparent())
        if tracestate is not None:
            fields["tracestate"] = tracestate
        if extensions or not self._trusted(payload.event_type, subject, epoch):
            if "traceparent" in extensions:  # the caller's trace: our cause names a span of another one
                fields.pop("tracestate", None)
            return cls(**{**fields, **extensions})
        return assemble(cls, fields)

    def _trusted(self, event_type: str, subject: str | None, epoch: int) -> bool:
        """Whether the fields the Bus did not make itself are within the envelope's constraints."""
        return (self._source_ok and (subject is None or (type(subject) is str and len(subject) <= MAX_SUBJECT))
                and type(epoch) is int and epoch >= 0 and type(event_type) is str
                and 0 < len(event_type) <= MAX_TYPE_LENGTH)

    async def publish(
        self, payload: Payload, routing_key: str, *, subject: str | None = None, mandatory: bool = False
    ) -> Envelope[Any]:
        """Publish and return the envelope that was sent (its ``id`` is what results refer to)."""
        envelope = self.envelope(payload, subject=subject)
        await self.send(envelope, routing_key, durable=payload.durable, mandatory=mandatory)
        count_published(envelope.type)
        return envelope

    async def send(
        self, envelope: Envelope[Any], routing_key: str, *, durable: bool, mandatory: bool = False
    ) -> None:
        """Publish an already-built envelope (signed intents are built, signed, then sent).

        A durable publish returns once the broker confirmed it or, with an outbox, once it is held on disk
        (``OutboxFull`` when it is neither). A mandatory one bypasses the outbox: its caller wants the broker's
        answer (unroutable?) now, which a held event cannot give."""
        body = encode(envelope)
        headers = {"ce-type": envelope.type, "ce-id": envelope.id}
        if durable and self.journal is not None:
            await self.journal.append(routing_key, body, headers)
        if durable and self.outbox is not None and not mandatory:
            await self._send_or_hold(self.outbox, routing_key, body, headers)
            return
        await self.transport.publish(routing_key, body, headers=headers, durable=durable, mandatory=mandatory)

    async def _send_or_hold(self, outbox: Outbox, routing_key: str, body: bytes, headers: dict[str, Any]) -> None:
        """Behind held events, or while the broker is away, hold; else publish, and hold if that fails for want
        of a broker (a refusal by the broker is the producer's to handle, not an outage)."""
        if outbox.pending or not is_connected(self.transport):
            await self._hold(outbox, routing_key, body, headers, "broker unreachable")
            return
        try:
            await self.transport.publish(routing_key, body, headers=headers, durable=True)
        except PublishRefused:
            raise
        except TransportError as exc:
            await self._hold(outbox, routing_key, body, headers, str(exc))

    async def _hold(self, outbox: Outbox, routing_key: str, body: bytes, headers: dict[str, Any],
                    why: str) -> None:
        if not outbox.pending:
            log.warning("holding durable events in the outbox %s until the broker is back: %s", outbox.path, why)
        await outbox.append(routing_key, body, headers)

    async def drain(self) -> None:
        """Forward held events whenever the broker is back, until cancelled: the session runs this in its task
        group. Without an outbox there is nothing to forward and it returns at once."""
        if self.outbox is not None:
            await self.outbox.run_drain(self.transport)

    def __repr__(self) -> str:
        held = f" outbox={len(self.outbox)}" if self.outbox is not None else ""
        return f"<Bus source={self.source} transport={self.transport!r}{held}>"
