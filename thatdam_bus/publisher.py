"""``Bus``: publish typed payloads as envelopes. The one place that stamps source, seq and epoch."""

from __future__ import annotations

import itertools
from typing import Any, Protocol

from thatdam_bus.envelope import Envelope, Payload, encode, source_uri
from thatdam_bus.transports.base import Transport
from thatdam_bus.types import EpochSource


class Journal(Protocol):
    """Somewhere durable events are also kept (the solo journal); ``append`` may refuse when full."""

    def append(self, routing_key: str, body: bytes) -> None: ...


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
    ) -> None:
        """``journal``: where a solo node also keeps its durable events until it joins a cluster."""
        self.transport = transport
        self.journal = journal
        self.node_id = node_id
        self.source = source_uri(cluster, node_id, service)
        self._epoch = epoch
        self._seq = itertools.count(1)

    def envelope(self, payload: Payload, *, subject: str | None = None, **extensions: Any) -> Envelope[Any]:
        """Wrap ``payload`` in a fresh envelope (new id, time, next seq, current epoch)."""
        return Envelope[type(payload)](  # type: ignore[misc]
            type=payload.event_type,
            source=self.source,
            subject=subject,
            data=payload,
            epoch=self._epoch(),
            seq=next(self._seq),
            **extensions,
        )

    async def publish(
        self, payload: Payload, routing_key: str, *, subject: str | None = None, mandatory: bool = False
    ) -> Envelope[Any]:
        """Publish and return the envelope that was sent (its ``id`` is what results refer to)."""
        envelope = self.envelope(payload, subject=subject)
        await self.send(envelope, routing_key, durable=payload.durable, mandatory=mandatory)
        return envelope

    async def send(
        self, envelope: Envelope[Any], routing_key: str, *, durable: bool, mandatory: bool = False
    ) -> None:
        """Publish an already-built envelope (signed intents are built, signed, then sent)."""
        body = encode(envelope)
        if durable and self.journal is not None:
            self.journal.append(routing_key, body)
        await self.transport.publish(
            routing_key,
            body,
            headers={"ce-type": envelope.type, "ce-id": envelope.id},
            durable=durable,
            mandatory=mandatory,
        )

    def __repr__(self) -> str:
        return f"<Bus source={self.source} transport={self.transport!r}>"
