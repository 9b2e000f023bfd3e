"""The solo flight recorder's files: bounded by bytes and age, offsets that only grow, torn tails cut, and a
follower that crosses segment rolls without a gap or a duplicate while the writer keeps appending."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from thatdam_bus.recorder.disk_ring import DiskRing
from thatdam_bus.recorder.replay import RingSource, Window, replay
from thatdam_bus.recorder.ring_format import Entry, segments
from thatdam_bus.recorder.ring_reader import RingReader

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
