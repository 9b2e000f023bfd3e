"""The solo journal never stops a solo node: when full it drops its oldest *locally delivered* copies, never an
event a cluster session held for a missing broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import Collector
from thatdam_bus.errors import OutboxFull
from thatdam_bus.node.journal import SoloJournal
from thatdam_bus.outbox import Outbox
from thatdam_bus.transports.base import QueueKind, QueueSpec
from thatdam_bus.transports.embedded import EmbeddedTransport


async def test_a_full_journal_keeps_the_newest_copies(state_dir: Path) -> None:
    journal = SoloJournal(state_dir, max_entries=5)
    for i in range(12):
        await journal.append("frame.n1.cam0.ready", f"{i}".encode())
    assert len(journal) == 5
    async with EmbeddedTransport(prefix="journal") as transport:
        got = Collector()
        await transport.subscribe(QueueSpec(patterns=("frame.#",), kind=QueueKind.DURABLE, name="idx"), got)
        assert await journal.replay(transport) == 5
        await got.wait_count(5)
    assert got.bodies == [f"{i}".encode() for i in range(7, 12)]


async def test_events_held_for_a_missing_broker_are_never_evicted(state_dir: Path) -> None:
    held = Outbox(state_dir, max_events=3)
    await held.append("intent.capture.start", b"held-1")
    await held.append("intent.capture.start", b"held-2")
    journal = SoloJournal(state_dir, max_entries=3)
    await journal.append("frame.n1.cam0.ready", b"copy-1")
    await journal.append("frame.n1.cam0.ready", b"copy-2")  # evicts copy-1, not a held event
    assert len(journal) == 3
    full = SoloJournal(state_dir, max_entries=2)  # smaller than what is held: nothing local left to evict
    with pytest.raises(OutboxFull):
        await full.append("frame.n1.cam0.ready", b"copy-3")
    async with EmbeddedTransport(prefix="journal2") as transport:
        got = Collector()
        await transport.subscribe(QueueSpec(patterns=("#",), kind=QueueKind.DURABLE, name="all"), got)
        await journal.replay(transport)
        await got.wait_count(3)
    assert got.bodies == [b"held-1", b"held-2", b"copy-2"]
