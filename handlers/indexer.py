"""Indexer: a catalogue of every captured frame, in SQLite, fed by a durable work queue on ``frame.*.*.ready``.

Roles: leader, worker and solo. The queue ``indexer.index`` is shared, so the nodes running the indexer are
competing consumers: each frame is indexed by one of them. Not the proxy role: a proxy relays for a host whose
capture runs elsewhere and typically cannot read that host's blob store. Not leader-only either: the leader is
one node, indexing is the bulk work, and a frame must not wait for an election to be indexed.

Consequence: each node's ``<state_dir>/index.sqlite`` holds the frames *it* indexed, a shard of the catalogue.
For one file with everything, run ``THATDAM_SERVICES=indexer`` on one node only.

The claim check is verified before anything is written: the blob at ``uri`` (``file://``, on a shared volume
when capture runs on another node) must exist and match ``sha256`` and ``size_bytes``. A missing or mismatching
blob is rejected with the reason (dead-lettered, never indexed); an unreadable one (a transient I/O error) is
retried, bounded by ``THATDAM_MAX_ATTEMPTS``.

Exactly once, by envelope id: the row is committed before the handler returns (so before the ack), and the
insert is ``INSERT OR IGNORE`` keyed by the envelope id. A node killed between its commit and its ack gets the
event again after a restart and indexes nothing new; a node killed before its commit loses nothing, because the
unacked event goes back to the queue. (Exactly once holds per catalogue file: an event redelivered to *another*
node after a crash may appear in both shards, once in each.)

Blocking work (hashing the file, SQLite) runs off the event loop, in ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

from thatdam_bus import (
    Envelope,
    FrameIndexed,
    FrameReady,
    HandlerContext,
    Patterns,
    QueueKind,
    Reject,
    Role,
    Service,
    Settings,
    topics,
)

CATALOGUE_FILE = "index.sqlite"
_CHUNK = 1 << 16
_SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (
    id          TEXT PRIMARY KEY,  -- the frame-ready envelope's id: the idempotency key
    node_id     TEXT NOT NULL,
    device      TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    pts         INTEGER,
    keyframe    INTEGER NOT NULL,
    width       INTEGER NOT NULL,
    height      INTEGER NOT NULL,
    size_bytes  INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    uri         TEXT NOT NULL,
    source      TEXT NOT NULL,
    captured_at TEXT NOT NULL,
    indexed_at  TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS frames_by_device ON frames (node_id, device, captured_at);
CREATE INDEX IF NOT EXISTS frames_by_sha ON frames (sha256);
"""


class BlobProblem(Exception):
    """The blob does not hold what the event promised: final, the event is rejected."""


def blob_path(uri: str) -> Path:
    parts = urlsplit(uri)
    if parts.scheme != "file":
        raise BlobProblem(f"unsupported blob uri {uri!r}: only file:// blobs can be verified")
    return Path(unquote(parts.path))


def verify_blob(frame: FrameReady) -> None:
    """Hash the blob (blocking: call it in a thread). ``BlobProblem`` when missing or not the promised bytes;
    other ``OSError`` (permissions, a flaky volume) propagate and the event is retried."""
    path = blob_path(frame.uri)
    digest, size = hashlib.sha256(), 0
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except (FileNotFoundError, IsADirectoryError):
        raise BlobProblem(f"blob missing: {path}") from None
    if digest.hexdigest() != frame.sha256:
        raise BlobProblem(f"blob {path} does not match its sha256 (has {digest.hexdigest()[:16]}..)")
    if size != frame.size_bytes:
        raise BlobProblem(f"blob {path} is {size} bytes, the event says {frame.size_bytes}")


class Catalogue:
    """The SQLite file of indexed frames. One connection, opened on first use, shared by worker threads under a
    lock (SQLite serialises writers anyway); WAL, so readers (``thatdam`` tools, tests) never block it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self.added = 0
        self.duplicates = 0

    @classmethod
    def for_settings(cls, settings: Settings) -> Catalogue:
        return cls(settings.state_dir / CATALOGUE_FILE)

    async def add(self, event: Envelope[FrameReady]) -> bool:
        """Index one frame; False when its envelope id was indexed before (a redelivery)."""
        return await asyncio.to_thread(self._insert, event)

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # durable across a process crash; a power cut may lose the
            db.executescript(_SCHEMA)                # last commits, whose events were then not acked either
            self._db = db
        return self._db

    def _insert(self, event: Envelope[FrameReady]) -> bool:
        frame = event.data
        row = (event.id, frame.node_id, frame.device, frame.seq, frame.pts, int(frame.keyframe), frame.width,
               frame.height, frame.size_bytes, frame.sha256, frame.uri, event.source,
               frame.captured_at.isoformat(), datetime.now(UTC).isoformat())
        with self._lock:
            cursor = self._connect().execute(
                "INSERT OR IGNORE INTO frames VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            new = cursor.rowcount == 1
        if new:
            self.added += 1
        else:
            self.duplicates += 1
        return new

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __repr__(self) -> str:
        return f"<Catalogue {self.path} added={self.added} duplicates={self.duplicates}>"


service = Service("indexer", roles={Role.LEADER, Role.WORKER, Role.SOLO}, state=Catalogue.for_settings,
                  description="Verifies each frame's blob and records it in the SQLite catalogue, once.")


@service.on(Patterns.FRAMES, queue=QueueKind.DURABLE, prefetch=32)
async def index(event: Envelope[FrameReady], ctx: HandlerContext) -> None:
    """Verify the claim check, record the frame (idempotent by envelope id), then announce it in the frame's
    trace (``frame.<node>.<device>.indexed``)."""
    catalogue: Catalogue = ctx.state
    frame = event.data
    try:
        await asyncio.to_thread(verify_blob, frame)
    except BlobProblem as exc:
        raise Reject(str(exc)) from None
    if not await catalogue.add(event):
        ctx.log.info("frame %s was indexed before (redelivery): nothing to do", event.id)
        return
    indexed = FrameIndexed(node_id=frame.node_id, device=frame.device, seq=frame.seq, frame_event_id=event.id,
                           sha256=frame.sha256, indexed_by=ctx.node_id)
    await ctx.bus.publish(indexed, topics.frame_indexed(frame.node_id, frame.device))
