"""Reading the solo flight recorder: from an offset, a time or the start, and then following it live.

The reader never writes. Following works like ``tail -F`` over segments: read what is complete in the current
segment; when nothing is, a newer segment means the current one is finished (the writer never appends to an
older segment), so read it once more (an append may have landed just before the roll) and move on. A segment
deleted by retention under a slow reader is a gap: reported through ``on_gap`` and skipped, never a crash.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from pathlib import Path

from thatdam_bus.recorder.ring_format import Entry, decode_records, segments

POLL_S = 0.05
CHUNK = 1 << 20


class RingReader:
    """A read-only view of one recorder directory."""

    def __init__(self, directory: Path, *, poll_s: float = POLL_S,
                 on_gap: Callable[[int, int], None] | None = None) -> None:
        self.directory = Path(directory)
        self.poll_s = poll_s
        self.on_gap = on_gap

    def exists(self) -> bool:
        return bool(segments(self.directory))

    def first_offset(self) -> int:
        found = segments(self.directory)
        return found[0][0] if found else 0

    def end_offset(self) -> int:
        """The offset the next recorded event will get (one past the last one now)."""
        found = segments(self.directory)
        if not found:
            return 0
        last = None
        for entry in self._entries(found[-1][1]):
            last = entry.offset
        return found[-1][0] if last is None else last + 1

    def offset_since(self, moment: float) -> int:
        """The first offset recorded at or after ``moment`` (wall clock), else the end."""
        found = segments(self.directory)
        for index, (_, path) in enumerate(found):
            if index + 1 < len(found) and _mtime(path) < moment:
                continue  # its last append was before ``moment``: nothing in it qualifies
            for entry in self._entries(path):
                if entry.time >= moment:
                    return entry.offset
        return self.end_offset()

    def read(self, start: int, end: int) -> Iterator[Entry]:
        """Entries with ``start <= offset < end`` that are still on disk, in order."""
        found = segments(self.directory)
        for index, (first, path) in enumerate(found):
            following = found[index + 1][0] if index + 1 < len(found) else None
            if (following is not None and following <= start) or first >= end:
                continue
            for entry in self._entries(path):
                if entry.offset >= end:
                    return
                if entry.offset >= start:
                    yield entry

    async def follow(self, start: int) -> AsyncGenerator[Entry, None]:
        """Every entry from ``start`` on, in order, then each new one as it is recorded; until cancelled."""
        expected = start
        position, current = 0, self._segment_for(expected)
        while True:
            if current is None:
                await asyncio.sleep(self.poll_s)
                current, position = self._segment_for(expected), 0
                continue
            entries, position, readable = await asyncio.to_thread(self._read_from, current[1], position)
            if not readable:  # deleted by retention under us
                current, position = self._segment_for(expected), 0
                continue
            fresh, expected = self._after(entries, expected)
            for entry in fresh:
                yield entry
            if entries:
                continue
            newer = [s for s in segments(self.directory) if s[0] > current[0]]
            if not newer:
                await asyncio.sleep(self.poll_s)
                continue
            late, position, _ = await asyncio.to_thread(self._read_from, current[1], position)
            fresh, expected = self._after(late, expected)
            for entry in fresh:
                yield entry
            current, position = newer[0], 0

    def _after(self, entries: list[Entry], expected: int) -> tuple[list[Entry], int]:
        """The entries from ``expected`` on, reporting each hole before one, and the offset expected next."""
        fresh = []
        for entry in entries:
            if entry.offset >= expected:
                if entry.offset > expected and self.on_gap is not None:
                    self.on_gap(expected, entry.offset)
                expected = entry.offset + 1
                fresh.append(entry)
        return fresh, expected

    def _segment_for(self, offset: int) -> tuple[int, Path] | None:
        """The segment holding ``offset`` (or the oldest one after it, when it has expired)."""
        found = segments(self.directory)
        holder = None
        for first, path in found:
            if first <= offset:
                holder = (first, path)
            elif holder is None:
                if self.on_gap is not None:
                    self.on_gap(offset, first)
                return first, path
        return holder

    @staticmethod
    def _read_from(path: Path, position: int) -> tuple[list[Entry], int, bool]:
        try:
            with path.open("rb") as file:
                file.seek(position)
                data = file.read(CHUNK)
                entries = list(decode_records(data))
                if not entries and len(data) == CHUNK:  # one record larger than a chunk
                    file.seek(position)
                    entries = list(decode_records(file.read()))
        except FileNotFoundError:
            return [], position, False
        end = entries[-1][1] if entries else 0
        return [entry for entry, _ in entries], position + end, True

    @staticmethod
    def _entries(path: Path) -> Iterator[Entry]:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        for entry, _ in decode_records(data):
            yield entry


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()
