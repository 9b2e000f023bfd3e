"""Content-addressed blob store: a directory of JPEGs named by their sha256 (the claim-check half of frames).

Layout: ``<root>/<sha[:2]>/<sha><suffix>``. Why content addressing: the name *is* the checksum consumers
verify, a repeated frame (a static scene) is stored once, and two writers of the same bytes cannot
conflict. Writes are atomic (a private temp file in the shard directory, then ``os.replace``), so a reader
never sees a half-written JPEG, even on a volume shared between nodes.

Retention keeps at most ``max_count`` blobs and/or ``max_bytes``, evicting the oldest first, but never a
*pinned* blob (one an in-process consumer still needs; pins are counted and live in this process) and never a
blob younger than ``grace_s`` (by its write time, i.e. its mtime, so the rule survives a restart and holds for
consumers in other processes, which cannot pin here). The grace period is the claim-check guarantee across
nodes: a frame-ready event processed within ``grace_s`` of its capture finds its blob. When the caps are too
small for the grace period, the store overflows them by at most what was written within ``grace_s``.
Retention only counts blobs this instance has seen (its start-up scan plus its own writes).

Blocking: every method does file I/O; call ``put`` through ``asyncio.to_thread``. The store is thread-safe.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("thatdam_bus.frames.blobstore")

STALE_TEMP_S = 3600.0
"""Temp files older than this at start-up are leftovers of a crashed writer and are removed."""

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class StoredBlob:
    uri: str
    sha256: str
    size: int
    path: Path


@dataclass(slots=True)
class BlobStoreStats:
    written: int = 0
    deduplicated: int = 0
    evicted: int = 0


class BlobStore:
    """A content-addressed directory with oldest-first retention that skips pinned blobs."""

    def __init__(
        self,
        root: Path | str,
        *,
        max_count: int | None = None,
        max_bytes: int | None = None,
        suffix: str = ".jpg",
        fsync: bool = False,
        grace_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``grace_s``: blobs written less than this long ago are never evicted; ``clock``: the wall clock
        (compared with mtimes), injectable for tests."""
        if grace_s < 0:
            raise ValueError("blob store grace period must be >= 0")
        if (max_count is not None and max_count < 1) or (max_bytes is not None and max_bytes < 1):
            raise ValueError("blob store caps must be >= 1 (or None for no cap)")
        self.root = Path(root).resolve()
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.suffix = suffix
        self.grace_s = grace_s
        self._clock = clock
        self.stats = BlobStoreStats()
        self._fsync = fsync  # off by default: SD cards on edge boxes pay dearly; a lost thumbnail is cheap
        self._lock = threading.Lock()
        self._index: OrderedDict[str, int] = OrderedDict()  # sha -> size, oldest first
        self._written: dict[str, float] = {}  # sha -> wall-clock write (or refresh) time
        self._bytes = 0
        self._pins: Counter[str] = Counter()
        self.root.mkdir(parents=True, exist_ok=True)
        self._scan()

    # -- public ---------------------------------------------------------------------------------------------

    def put(self, data: bytes, *, pin: bool = False) -> StoredBlob:
        """Store ``data`` (idempotent), optionally pinning it in the same step, then enforce retention.

        Pin here rather than after ``put`` returns when the blob is about to be referenced by an event:
        otherwise a concurrent ``put`` could evict it in between. The blob just written is never evicted by
        its own ``put``.
        """
        sha = hashlib.sha256(data).hexdigest()
        path = self.path_for(sha)
        temp = None if sha in self._index else self._write_temp(path.parent, sha, data)
        with self._lock:
            if pin:
                self._pins[sha] += 1
            if sha in self._index:
                self._refresh(sha, path)
            elif temp is None:  # evicted between our check and the lock: write again, under the lock
                self._register(sha, self._write_temp(path.parent, sha, data), path, len(data))
            else:
                self._register(sha, temp, path, len(data))
                temp = None
            self._evict(keep=sha)
        if temp is not None:
            temp.unlink(missing_ok=True)
        return StoredBlob(path.as_uri(), sha, len(data), path)

    def pin(self, sha256: str) -> None:
        """Protect a blob from eviction until a matching ``unpin`` (pins are counted)."""
        with self._lock:
            self._pins[sha256] += 1

    def unpin(self, sha256: str) -> None:
        """Release one pin; when the last goes and the store is over its cap, retention runs again."""
        with self._lock:
            if self._pins[sha256] <= 1:
                self._pins.pop(sha256, None)
                self._evict(keep=None)
            else:
                self._pins[sha256] -= 1

    def is_pinned(self, sha256: str) -> bool:
        with self._lock:
            return self._pins[sha256] > 0

    def path_for(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / f"{sha256}{self.suffix}"

    def __contains__(self, sha256: object) -> bool:
        return sha256 in self._index

    def __len__(self) -> int:
        return len(self._index)

    @property
    def total_bytes(self) -> int:
        return self._bytes

    def __repr__(self) -> str:
        return (f"<BlobStore {self.root} blobs={len(self._index)} bytes={self._bytes}"
                f" pinned={len(self._pins)} caps=(count={self.max_count}, bytes={self.max_bytes})>")

    # -- internals ------------------------------------------------------------------------------------------

    def _write_temp(self, shard: Path, sha: str, data: bytes) -> Path:
        shard.mkdir(parents=True, exist_ok=True)
        temp = shard / f".{sha}.{secrets.token_hex(6)}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                if self._fsync:
                    handle.flush()
                    os.fsync(handle.fileno())
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return temp

    def _register(self, sha: str, temp: Path, path: Path, size: int) -> None:
        os.replace(temp, path)
        self._index[sha] = size
        self._written[sha] = self._clock()
        self._bytes += size
        self.stats.written += 1

    def _refresh(self, sha: str, path: Path) -> None:
        """Same bytes again: now the newest blob (on disk too, for the next start-up scan)."""
        self._index.move_to_end(sha)
        self._written[sha] = self._clock()
        self.stats.deduplicated += 1
        try:
            os.utime(path)
        except FileNotFoundError:  # removed behind our back (another process): restore nothing, forget it
            self._bytes -= self._index.pop(sha)
            self._written.pop(sha, None)

    def _over_cap(self) -> bool:
        return ((self.max_count is not None and len(self._index) > self.max_count)
                or (self.max_bytes is not None and self._bytes > self.max_bytes))

    def _evict(self, keep: str | None) -> None:
        young_after = self._clock() - self.grace_s
        while self._over_cap():
            victim = next((sha for sha in self._index if sha != keep and self._pins[sha] <= 0), None)
            # The index is ordered by write time: once the oldest candidate is in its grace period, all are.
            if victim is None or (self.grace_s > 0 and self._written.get(victim, 0.0) > young_after):
                log.debug("blob store over its cap, but every remaining blob is pinned or in its grace period")
                return
            self._bytes -= self._index.pop(victim)
            self._written.pop(victim, None)
            self._pins.pop(victim, None)
            self.path_for(victim).unlink(missing_ok=True)
            self.stats.evicted += 1

    def _scan(self) -> None:
        """Index existing blobs oldest-first by mtime, and sweep temp files a crashed writer left behind."""
        found: list[tuple[float, str, int]] = []
        now = time.time()
        for path in self.root.glob("??/*"):
            try:
                info = path.stat()
            except FileNotFoundError:  # another writer's temp file, renamed or swept meanwhile
                continue
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                if now - info.st_mtime > STALE_TEMP_S:
                    path.unlink(missing_ok=True)
                continue
            sha = path.name.removesuffix(self.suffix)
            if path.name.endswith(self.suffix) and _SHA256.match(sha) and path.parent.name == sha[:2]:
                found.append((info.st_mtime, sha, info.st_size))
        for mtime, sha, size in sorted(found):
            self._index[sha] = size
            self._written[sha] = mtime
            self._bytes += size
        with self._lock:
            self._evict(keep=None)
