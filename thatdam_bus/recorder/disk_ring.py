"""The solo flight recorder's writer: appends every event to size- and age-bounded segment files.

Retention works like a RabbitMQ stream's, by whole segments, and is applied *before* each append, so the files
never hold more than ``max_bytes`` together (a single event larger than that is not recorded). An event that is
not recorded, for that or because it was lost before it reached the ring (``skip``), leaves its offset unused:
a reader finds the hole where it was and reports it, instead of a seamless history that is not whole.
The active segment rolls once it would pass ``segment_bytes``; the oldest segments are deleted while the total
would pass ``max_bytes``, and any segment whose last append is older than ``max_age_s`` goes too (checked at
most once a second, and by ``expire()``). The newest segment is never deleted, only rolled: its name keeps
the next offset, so offsets keep increasing across restarts even when everything older has expired.

Each record is one unbuffered ``write`` (a few microseconds into the page cache), so a reader following the
files sees it at once. It is not fsynced: a recorder is for looking back, not for durability, and a torn last
record left by a crash is cut off when the segment is opened again.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from thatdam_bus.metrics.instruments import RECORDER_BYTES, RECORDER_EVENTS
from thatdam_bus.recorder.ring_format import encode_record, scan, segment_name, segments

log = logging.getLogger("thatdam_bus.recorder")
RECORDER_DIR = "recorder"


class DiskRing:
    """Appends to ``directory``; see the module docstring for the bounds. Not thread-safe: one writer."""

    def __init__(self, directory: Path, *, max_bytes: int, segment_bytes: int, max_age_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        if max_bytes < 1 or segment_bytes < 1 or max_age_s <= 0:
            raise ValueError("max_bytes, segment_bytes and max_age_s must be positive")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = min(segment_bytes, max_bytes)
        self.max_age_s = max_age_s
        self.skipped = 0
        self._clock = clock
        self._sizes: dict[Path, int] = {}
        self._order: list[Path] = []
        self._file: BinaryIO | None = None
        self._next = 0
        self._expired_at = 0.0

    @property
    def next_offset(self) -> int:
        return self._next

    @property
    def total_bytes(self) -> int:
        return sum(self._sizes.values())

    def open(self) -> DiskRing:
        """Adopt the segments on disk (cutting a torn last record) and continue after the last offset."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        found = segments(self.directory)
        for first, path in found:
            self._order.append(path)
            self._sizes[path] = path.stat().st_size
            self._next = first
        if found:
            valid, last = scan(self._order[-1])
            if valid != self._sizes[self._order[-1]]:
                log.warning("recorder: cutting a torn record off %s", self._order[-1])
                os.truncate(self._order[-1], valid)
                self._sizes[self._order[-1]] = valid
            self._next = found[-1][0] if last is None else last + 1
            self._file = self._order[-1].open("ab", buffering=0)
        else:
            self._new_segment()
        self._publish_size()
        return self

    def append(self, routing_key: str, body: bytes, headers: Mapping[str, Any] | None = None) -> int | None:
        """Record one event; returns its offset, or None when it alone is larger than ``max_bytes``."""
        record = encode_record(self._next, self._clock(), routing_key, headers, body)
        if len(record) > self.max_bytes:
            log.warning("recorder: an event of %d bytes on %s exceeds the recorder's %d bytes; not recorded",
                        len(body), routing_key, self.max_bytes)
            self.skip(1)
            return None
        self._expire_by_age()
        self._make_room(len(record))
        assert self._file is not None
        self._file.write(record)
        self._sizes[self._order[-1]] += len(record)
        offset, self._next = self._next, self._next + 1
        RECORDER_EVENTS.inc()
        return offset

    def skip(self, count: int) -> None:
        """Leave ``count`` offsets unused for events that will never be recorded (counted in ``skipped``). The
        next record goes into a segment named by its offset, so the hole is on disk, and survives a restart
        (which continues after the newest segment's name or last record) even if nothing follows it yet."""
        self._next += count
        self.skipped += count
        current = self._order[-1]
        self.close()
        if self._sizes[current] == 0:  # nothing in it: its name would stand for an offset never used
            self._order.pop()
            del self._sizes[current]
            current.unlink(missing_ok=True)
        self._new_segment()

    def expire(self) -> None:
        """Apply the age bound now (the service calls this periodically, so an idle recorder still ages)."""
        self._expired_at = 0.0
        self._expire_by_age()
        self._publish_size()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> DiskRing:
        return self.open()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<DiskRing {self.directory} segments={len(self._order)} bytes={self.total_bytes}"
                f"/{self.max_bytes} next={self._next}>")

    # -- retention -------------------------------------------------------------------------------------

    def _make_room(self, size: int) -> None:
        if self._sizes[self._order[-1]] and self._sizes[self._order[-1]] + size > self.segment_bytes:
            self._roll()
        while self.total_bytes + size > self.max_bytes:
            if len(self._order) == 1:
                self._roll()
            self._delete_oldest()
        self._publish_size()

    def _expire_by_age(self) -> None:
        now = self._clock()
        if now - self._expired_at < 1.0:
            return
        self._expired_at = now
        horizon = now - self.max_age_s
        if self._sizes[self._order[-1]] and self._mtime(self._order[-1]) < horizon:
            self._roll()  # an idle, outdated active segment: roll so that it can go
        while len(self._order) > 1 and self._mtime(self._order[0]) < horizon:
            self._delete_oldest()

    def _roll(self) -> None:
        self.close()
        self._new_segment()

    def _new_segment(self) -> None:
        path = self.directory / segment_name(self._next)
        self._file = path.open("ab", buffering=0)
        if path not in self._sizes:
            self._order.append(path)
            self._sizes[path] = 0

    def _delete_oldest(self) -> None:
        path = self._order.pop(0)
        del self._sizes[path]
        path.unlink(missing_ok=True)

    @staticmethod
    def _mtime(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def _publish_size(self) -> None:
        RECORDER_BYTES.set(self.total_bytes)


def open_disk_ring(state_dir: Path, *, max_bytes: int, segment_bytes: int, max_age_s: float) -> DiskRing:
    return DiskRing(state_dir / RECORDER_DIR, max_bytes=max_bytes, segment_bytes=segment_bytes,
                    max_age_s=max_age_s).open()
