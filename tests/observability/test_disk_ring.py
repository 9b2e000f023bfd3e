"""The solo flight recorder's files: bounded by bytes and age, offsets that only grow, torn tails cut, a
follower that crosses segment rolls without a gap or a duplicate while the writer keeps appending, and events
that were never recorded (too large, or dropped by the recorder's queue) left as holes that a follower reports."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import wait_until
from thatdam_bus.config import load_settings
from thatdam_bus.context import TaskContext
from thatdam_bus.publisher import Bus
from thatdam_bus.recorder.disk_ring import DiskRing
from thatdam_bus.recorder.replay import RingSource, Window, replay
from thatdam_bus.recorder.ring_format import Entry, segments
from thatdam_bus.recorder.ring_reader import RingReader
from thatdam_bus.recorder.service import _record
from thatdam_bus.topics import Patterns
from thatdam_bus.transports.base import Delivery, DeliveryCallback, QueueSpec

BODY = b"x" * 200


def on_disk(directory: Path) -> int:
    return sum(path.stat().st_size for _, path in segments(directory))


def ring(directory: Path, max_bytes: int = 20_000, segment_bytes: int = 4_096, max_age_s: float = 3600) -> DiskRing:
    return DiskRing(directory, max_bytes=max_bytes, segment_bytes=segment_bytes, max_age_s=max_age_s).open()


def test_the_files_never_hold_more_than_max_bytes(tmp_path: Path) -> None:
    """Measured: the sum of the segment files' sizes after every append (what ``du`` would say)."""
    writer = ring(tmp_path)
    for n in range(3_000):
        assert writer.append("obs.seq", BODY, {"ce-id": str(n)}) == n
        assert on_disk(tmp_path) <= 20_000
    kept = list(RingReader(tmp_path).read(0, writer.next_offset))
    assert 0 < len(kept) <= 20_000 // len(BODY)
    assert [e.offset for e in kept] == list(range(kept[0].offset, 3_000)), "the newest are kept, contiguous"
    assert writer.append("obs.big", b"y" * 30_000) is None and writer.skipped == 1
    writer.close()


def test_segments_older_than_max_age_go(tmp_path: Path) -> None:
    writer = ring(tmp_path, max_age_s=60)
    for _ in range(100):
        writer.append("obs.seq", BODY)
    old = time.time() - 3_600
    for _, path in segments(tmp_path):
        os.utime(path, (old, old))
    writer.expire()
    assert RingReader(tmp_path).end_offset() == 100 and not list(RingReader(tmp_path).read(0, 100))
    assert writer.append("obs.seq", BODY) == 100, "offsets keep growing after everything expired"
    writer.close()


def test_offsets_survive_a_restart_and_a_torn_tail_is_cut(tmp_path: Path) -> None:
    writer = ring(tmp_path)
    for _ in range(10):
        writer.append("obs.seq", BODY)
    writer.close()
    last = segments(tmp_path)[-1][1]
    with last.open("ab") as file:
        file.write(b"\x01\x02\x03 torn")  # a crash in the middle of a write
    writer = ring(tmp_path)
    assert writer.append("obs.seq", b"after") == 10
    writer.close()
    assert [e.offset for e in RingReader(tmp_path).read(0, 11)] == list(range(11))


async def test_following_across_rolls_has_no_gap_and_no_duplicate(tmp_path: Path) -> None:
    writer = ring(tmp_path, max_bytes=10_000_000, segment_bytes=4_096)
    reader = RingReader(tmp_path, poll_s=0.001)
    seen: list[int] = []

    async def follow() -> None:
        async for entry in reader.follow(0):
            seen.append(int(entry.body))
            if len(seen) == 2_000:
                return

    follower = asyncio.create_task(follow())
    for n in range(2_000):
        writer.append("obs.seq", str(n).encode())
        if n % 50 == 0:
            await asyncio.sleep(0)  # let the follower interleave with the writer
    async with asyncio.timeout(20):
        await follower
    writer.close()
    assert seen == list(range(2_000))
    assert len(segments(tmp_path)) > 10


@pytest.mark.parametrize("pattern", ["obs.#", "obs.even"])
async def test_last_n_counts_the_events_that_pass_the_filter(tmp_path: Path, pattern: str) -> None:
    writer = ring(tmp_path, max_bytes=10_000_000)
    for n in range(1_000):
        writer.append("obs.even" if n % 2 == 0 else "obs.odd", str(n).encode())
    printed: list[int] = []

    def matches(entry: Entry) -> bool:
        return entry.routing_key == "obs.even" or pattern == "obs.#"

    async def deliver(entry: Entry) -> bool:
        if matches(entry):
            printed.append(int(entry.body))
        return len(printed) < 5

    await replay(RingSource(RingReader(tmp_path)), Window(last=5), matches, deliver)
    writer.close()
    assert printed == ([995, 996, 997, 998, 999] if pattern == "obs.#" else [990, 992, 994, 996, 998])


async def test_what_was_never_recorded_is_a_hole_the_follower_reports(tmp_path: Path) -> None:
    """An oversized event and events lost before the ring (``skip``) leave their offsets unused."""
    writer = ring(tmp_path)
    gaps: list[tuple[int, int]] = []
    reader = RingReader(tmp_path, poll_s=0.001, on_gap=lambda expected, found: gaps.append((expected, found)))
    assert writer.append("obs.seq", b"0") == 0
    assert writer.append("obs.big", b"y" * 30_000) is None
    assert writer.append("obs.seq", b"2") == 2
    writer.skip(3)
    assert writer.append("obs.seq", b"6") == 6 and writer.skipped == 4
    writer.close()
    seen: list[int] = []
    async with asyncio.timeout(10):
        async for entry in reader.follow(0):
            seen.append(entry.offset)
            if entry.offset == 6:
                break
    assert seen == [0, 2, 6]
    assert gaps == [(1, 2), (3, 6)]


@dataclass
class LossyTap:
    """Stands in for the embedded transport's lossy subscription: the test sets what its queue dropped."""

    queue: str = "recorder-tap"
    dropped: int = 0

    async def cancel(self) -> None:
        return None


class TapTransport:
    """Only what ``_record`` touches: ``subscribe``, keeping the callback for the test to drive."""

    def __init__(self) -> None:
        self.tap = LossyTap()
        self.deliver: DeliveryCallback | None = None

    async def subscribe(self, spec: QueueSpec, callback: DeliveryCallback) -> LossyTap:
        assert spec.patterns == Patterns.RECORDED
        self.deliver = callback
        return self.tap


async def test_the_solo_recorder_leaves_a_hole_where_its_queue_dropped_events(tmp_path: Path) -> None:
    transport = TapTransport()
    writer = ring(tmp_path)
    ctx = TaskContext(bus=Bus(transport, cluster="test", node_id="n1"),  # type: ignore[arg-type]
                      node_id="n1", log=logging.getLogger("test"), state=None, settings=load_settings())
    recording = asyncio.create_task(_record(ctx, writer))
    try:
        await wait_until(lambda: transport.deliver is not None, what="the recorder subscribed")
        assert transport.deliver is not None
        await transport.deliver(Delivery("capture.n1.cam0.started", b"first"))
        transport.tap.dropped = 5  # a burst overflowed the recorder's queue before the next one was taken
        await transport.deliver(Delivery("capture.n1.cam0.stopped", b"after the burst"))
        await transport.deliver(Delivery("capture.n1.cam0.started", b"again"))
    finally:
        recording.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await recording
        writer.close()
    kept = [(entry.offset, entry.body) for entry in RingReader(tmp_path).read(0, 100)]
    assert kept == [(0, b"first"), (6, b"after the burst"), (7, b"again")]


def test_a_hole_at_the_end_survives_a_restart(tmp_path: Path) -> None:
    """Events lost just before the node stops: their offsets stay unused after it starts again."""
    writer = ring(tmp_path)
    writer.append("obs.seq", b"0")
    writer.append("obs.seq", b"1")
    writer.skip(3)
    writer.close()
    writer = ring(tmp_path)
    assert writer.next_offset == 5 and writer.append("obs.seq", b"5") == 5
    writer.skip(2)
    writer.skip(1)  # again, before anything was recorded after the first skip
    assert writer.append("obs.seq", b"9") == 9
    writer.close()
    assert [entry.offset for entry in RingReader(tmp_path).read(0, 100)] == [0, 1, 5, 9]
