"""The solo journal: durable events a solo node produced, kept on disk until the cluster has them.

A solo node's durable events (frames, capture results) matter to the cluster it may join later, so each one is
kept here as well as published on the embedded broker. When the node joins, the journal is replayed in order
onto RabbitMQ with confirms, before any handler subscribes. Consumers are idempotent by envelope id, so a replay
cut short by a crash and repeated is harmless. Bounded: when full, producers get ``OutboxFull`` (a
``PublishRefused``), never a silent drop.

It is the outbox (``thatdam_bus.outbox``): the same file, so events a cluster session held during an outage and
events produced solo after the node fell back leave in the order they were produced.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import orjson

from thatdam_bus.outbox import DEFAULT_MAX_BYTES, Outbox
from thatdam_bus.transports.base import Transport

log = logging.getLogger("thatdam_bus.node.journal")
LEGACY_FILE = "solo-journal.jsonl"
"""The journal's format before it became the outbox: JSON lines of ``{"rk", "body" (base64)}``."""


class SoloJournal(Outbox):
    """The outbox of ``state_dir`` seen as the solo journal: ``replay`` forwards everything it holds."""

    def __init__(self, state_dir: Path, max_entries: int = 100_000, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        super().__init__(state_dir, max_events=max_entries, max_bytes=max_bytes)
        self._adopt_legacy(state_dir / LEGACY_FILE)

    async def replay(self, transport: Transport) -> int:
        """Publish every held event in order with confirms, then forget them; returns how many were forwarded."""
        forwarded = await self.flush(transport)
        if forwarded:
            log.info("forwarded %d durable events produced while solo or held while the broker was away",
                     forwarded)
        return forwarded

    def _adopt_legacy(self, path: Path) -> None:
        """A journal left by an older version: move its entries into the outbox (in one transaction), then
        delete it, so an upgrade loses nothing. A torn last line (crash during append) is skipped."""
        try:
            lines = path.read_bytes().splitlines()
        except FileNotFoundError:
            return
        entries: list[tuple[str, bytes, bytes | None]] = []
        for line in lines:
            try:
                entry = orjson.loads(line)
                entries.append((entry["rk"], base64.b64decode(entry["body"]), None))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                log.warning("skipping a torn line in %s (crash during append)", path)
        if entries:
            self._store.append(entries, max_events=2**62, max_bytes=2**62)  # adopting must not drop
        path.unlink()
        log.info("moved %d events from %s into %s", len(entries), path, self.path)
