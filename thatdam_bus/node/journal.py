"""The solo journal: durable events a solo node produced, kept on disk until the cluster has them.

A solo node's durable events (frames, capture results) matter to the cluster it may join later, so each one is
kept here as well as published on the embedded broker. When the node joins, the journal is replayed in order
onto RabbitMQ with confirms, before any handler subscribes. Consumers are idempotent by envelope id, so a replay
cut short by a crash and repeated is harmless.

Bounded, without ever stopping a solo node: every journal entry is a *copy* of an event already delivered on the
embedded broker (its local consumers have it), so when the journal is full it drops its oldest copies, counted
and logged, instead of refusing the producer. A node that runs solo for days (2 frames/s fills 100,000 entries in
14 hours) keeps capturing and forwards the newest ``max_entries`` events when it joins. Events a cluster session
held for a missing broker (never delivered anywhere) share the file but are never evicted for this.

It is the outbox (``thatdam_bus.outbox``): the same file, so events a cluster session held during an outage and
events produced solo after the node fell back leave in the order they were produced.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from thatdam_bus.outbox import DEFAULT_MAX_BYTES, Outbox
from thatdam_bus.transports.base import Transport

log = logging.getLogger("thatdam_bus.node.journal")
EVICTION_LOG_EVERY = 1000
LEGACY_FILE = "solo-journal.jsonl"
"""The journal's format before it became the outbox: JSON lines of ``{"rk", "body" (base64)}``."""


class SoloJournal(Outbox):
    """The outbox of ``state_dir`` seen as the solo journal: ``replay`` forwards everything it holds."""

    def __init__(self, state_dir: Path, max_entries: int = 100_000, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        super().__init__(state_dir, max_events=max_entries, max_bytes=max_bytes)
        self._adopt_legacy(state_dir / LEGACY_FILE)

    async def append(self, routing_key: str, body: bytes, headers: Mapping[str, Any] | None = None) -> None:
        """Keep a copy of an event just delivered on the embedded broker, evicting the oldest copies if full."""
        entry = (routing_key, body, orjson.dumps(dict(headers)) if headers else None)
        before = self._store.evicted
        await asyncio.to_thread(self._store.append, [entry], self.max_events, self.max_bytes,
                                delivered_locally=True)
        after = self._store.evicted
        if after > before and (before == 0 or after // EVICTION_LOG_EVERY > before // EVICTION_LOG_EVERY):
            log.warning("solo journal full: %d oldest copies dropped so far (all were delivered locally); "
                        "the cluster will get the newest %d on join", self._store.evicted, self.max_events)

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
