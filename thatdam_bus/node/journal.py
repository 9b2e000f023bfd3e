"""The solo journal: durable events a solo node produced, kept on disk until the cluster has them.

A solo node's durable events (frames, capture results) matter to the cluster it may join later, so each one is
appended here as well as published on the embedded broker. When the node joins, the journal is replayed in order
onto RabbitMQ with confirms and then truncated. Consumers are idempotent by envelope id, so a replay cut short by
a crash and repeated is harmless. Bounded: when full, producers get ``PublishRefused`` (never a silent drop).
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import orjson

from thatdam_bus.errors import PublishRefused
from thatdam_bus.transports.base import Transport

log = logging.getLogger("thatdam_bus.node.journal")
JOURNAL_FILE = "solo-journal.jsonl"


class SoloJournal:
    """Append-only JSON-lines file of (routing key, body) pairs, at most ``max_entries`` long."""

    def __init__(self, state_dir: Path, max_entries: int = 100_000) -> None:
        self.path = state_dir / JOURNAL_FILE
        self.max_entries = max_entries
        self._count = sum(1 for _ in self._entries())

    def __len__(self) -> int:
        return self._count

    def append(self, routing_key: str, body: bytes) -> None:
        if self._count >= self.max_entries:
            raise PublishRefused(f"solo journal {self.path} is full ({self.max_entries} durable events)")
        line = orjson.dumps({"rk": routing_key, "body": base64.b64encode(body).decode()})
        with self.path.open("ab") as handle:
            handle.write(line + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        self._count += 1

    async def replay(self, transport: Transport) -> int:
        """Publish every entry in order with confirms, then truncate; returns how many were forwarded."""
        forwarded = 0
        for routing_key, body in self._entries():
            await transport.publish(routing_key, body, durable=True)
            forwarded += 1
        self.path.unlink(missing_ok=True)
        self._count = 0
        if forwarded:
            log.info("forwarded %d durable events produced while solo", forwarded)
        return forwarded

    def _entries(self) -> Iterator[tuple[str, bytes]]:
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return
        for line in lines:
            try:
                entry = orjson.loads(line)
                yield entry["rk"], base64.b64decode(entry["body"])
            except (orjson.JSONDecodeError, KeyError, ValueError):
                log.warning("skipping a torn line in %s (crash during append)", self.path)
