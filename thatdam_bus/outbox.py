"""The outbox: durable events kept on disk, in order, until the broker has confirmed them.

One file per state directory (``outbox.sqlite``) serves two cases:

* a cluster node's ``Bus`` puts a durable event here instead of on the wire while RabbitMQ is unreachable, and
  keeps doing so while older events still wait here (order is kept); ``run_drain`` forwards them in order, with
  confirms, once the transport is connected again;
* a solo node's ``Bus`` keeps a copy of every durable event here (``node.journal.SoloJournal``), forwarded when
  the node joins a cluster.

One file for both keeps order across a fall back to solo and a join: events held during an outage are older than
the ones produced solo afterwards, and leave first.

Why SQLite: each append is one fsynced transaction (``synchronous=FULL``), so a crash or a restart keeps it; the
head is deleted only after the broker confirmed it, batch by batch, so a crash mid-drain re-sends at most one
batch (consumers are idempotent by envelope id). Ids never repeat within a file (``AUTOINCREMENT``), and the
file is removed when it empties, so a drain that deletes "up to the last id it had confirmed" never removes an
entry appended meanwhile (a generation number guards the removal). Bounded by count and bytes: a full outbox
raises ``OutboxFull`` to the producer, never drops. Appends (an fsync each, about 2 ms on this hardware) run on
a worker thread so that a burst of held events does not stall the loop that renews the lease and heartbeats.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from thatdam_bus.config import Settings
from thatdam_bus.errors import OutboxFull, PublishRefused, TransportError
from thatdam_bus.transports.base import Transport

log = logging.getLogger("thatdam_bus.outbox")

OUTBOX_FILE = "outbox.sqlite"
DEFAULT_MAX_EVENTS = 100_000
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
BATCH_ROWS = 256
BATCH_BYTES = 1024 * 1024
_SCHEMA = ("CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, routing_key TEXT NOT NULL, "
           "body BLOB NOT NULL, headers BLOB, size INTEGER NOT NULL, delivered_locally INTEGER NOT NULL DEFAULT 0)")


class Held(NamedTuple):
    """One held event: what ``Transport.publish`` needs to send it again."""

    id: int
    routing_key: str
    body: bytes
    headers: dict[str, Any] | None


def is_connected(transport: Transport) -> bool:
    """A transport without a ``connected`` flag (embedded, socket) is taken as always connected."""
    return bool(getattr(transport, "connected", True))


class _Store:
    """The file and its counters, shared by every ``Outbox`` on the same path in this process (the solo journal
    and a cluster session's outbox are one file). Thread-safe: appends run on worker threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self.bytes = 0
        self.generation = 0
        self.evicted = 0
        """Locally delivered copies dropped to make room (the solo journal's forward is bounded)."""
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        if path.exists():
            with self._lock:
                self._open()

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(_SCHEMA)
        self.count, self.bytes = db.execute("SELECT count(*), coalesce(sum(size), 0) FROM outbox").fetchone()
        self._db = db
        return db

    def append(self, entries: list[tuple[str, bytes, bytes | None]], max_events: int, max_bytes: int,
               *, delivered_locally: bool = False) -> None:
        """Store ``entries`` in one fsynced transaction, or none of them (``OutboxFull``) if they do not fit.
        ``delivered_locally``: a copy of events already delivered on the embedded broker (the solo journal),
        which may make room for themselves by evicting the oldest such copies, never an undelivered event."""
        sizes = [len(rk) + len(body) + len(headers or b"") for rk, body, headers in entries]
        with self._lock:
            if delivered_locally:
                self._evict_local_copies(len(entries), sum(sizes), max_events, max_bytes)
            if self.count + len(entries) > max_events or self.bytes + sum(sizes) > max_bytes:
                raise OutboxFull(f"outbox {self.path} is full ({self.count} events, {self.bytes} bytes; bounds "
                                 f"{max_events} events, {max_bytes} bytes): the broker has been away too long")
            try:
                self._insert(self._db or self._open(), entries, sizes, delivered_locally)
            except (sqlite3.Error, OSError) as exc:
                raise PublishRefused(f"outbox {self.path} cannot keep the event: {exc}") from exc
            self.count += len(entries)
            self.bytes += sum(sizes)

    def _evict_local_copies(self, count: int, size: int, max_events: int, max_bytes: int) -> None:
        """Drop the oldest locally delivered copies until ``count`` events of ``size`` bytes fit (lock held)."""
        fits = self.count + count <= max_events and self.bytes + size <= max_bytes
        if self._db is None or fits:
            return
        local_count, local_bytes = self._db.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM outbox WHERE delivered_locally = 1").fetchone()
        if self.count - local_count + count > max_events or self.bytes - local_bytes + size > max_bytes:
            return  # even without every copy it would not fit: evict nothing, the append refuses
        while self.count + count > max_events or self.bytes + size > max_bytes:
            excess = max(self.count + count - max_events, 1)
            rows = self._db.execute("SELECT id, size FROM outbox WHERE delivered_locally = 1 ORDER BY id LIMIT ?",
                                    (excess,)).fetchall()
            if not rows:
                return
            self._db.execute("DELETE FROM outbox WHERE id <= ? AND delivered_locally = 1", (rows[-1][0],))
            self.count -= len(rows)
            self.bytes -= sum(row[1] for row in rows)
            self.evicted += len(rows)

    @staticmethod
    def _insert(db: sqlite3.Connection, entries: list[tuple[str, bytes, bytes | None]], sizes: list[int],
                delivered_locally: bool = False) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT INTO outbox (routing_key, body, headers, size, delivered_locally) "
                           "VALUES (?, ?, ?, ?, ?)",
                           [(*entry, size, int(delivered_locally)) for entry, size in zip(entries, sizes, strict=True)])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def head(self) -> tuple[int, list[Held]]:
        """The oldest entries (at most ``BATCH_ROWS``, about ``BATCH_BYTES``) and the file's generation."""
        with self._lock:
            held: list[Held] = []
            if self._db is None:
                return self.generation, held
            total = 0
            rows = self._db.execute("SELECT id, routing_key, body, headers, size FROM outbox ORDER BY id LIMIT ?",
                                    (BATCH_ROWS,))
            for entry_id, routing_key, body, headers, size in rows:
                held.append(Held(entry_id, routing_key, body, orjson.loads(headers) if headers else None))
                total += size
                if total >= BATCH_BYTES:
                    break
            rows.close()
            return self.generation, held

    def undelivered(self) -> int:
        """Entries no broker has: all but the solo journal's copies of events delivered on the embedded broker."""
        with self._lock:
            if self._db is None:
                return 0
            return int(self._db.execute("SELECT count(*) FROM outbox WHERE delivered_locally = 0").fetchone()[0])

    def delete_through(self, last_id: int, generation: int) -> None:
        """Forget every entry up to ``last_id`` (confirmed by the broker); remove the file once it is empty."""
        with self._lock:
            if self._db is None or generation != self.generation:
                return  # the file was emptied and removed meanwhile: these ids now name other entries
            removed, size = self._db.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM outbox WHERE id <= ?", (last_id,)).fetchone()
            self._db.execute("DELETE FROM outbox WHERE id <= ?", (last_id,))
            self.count -= removed
            self.bytes -= size
            if self.count == 0:
                self._remove()

    def _remove(self) -> None:
        assert self._db is not None
        self._db.close()
        self._db = None
        self.generation += 1
        for suffix in ("", "-wal", "-shm"):
            self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)


_STORES: weakref.WeakValueDictionary[Path, _Store] = weakref.WeakValueDictionary()


def _store_for(path: Path) -> _Store:
    key = path.resolve()
    store = _STORES.get(key)
    if store is None:
        store = _STORES[key] = _Store(key)
    return store


class Outbox:
    """Durable events waiting for the broker, oldest first. ``append`` holds one; ``flush`` forwards them all;
    ``run_drain`` flushes whenever there is something to forward and the transport is connected."""

    def __init__(self, state_dir: Path, *, max_events: int = DEFAULT_MAX_EVENTS,
                 max_bytes: int = DEFAULT_MAX_BYTES, name: str = OUTBOX_FILE) -> None:
        self.path = state_dir / name
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._store = _store_for(self.path)
        self._appending = 0
        self.forwarded = 0
        """Events forwarded by this outbox so far (a statistic for health checks and tests)."""

    def __len__(self) -> int:
        return self._store.count

    async def undelivered(self) -> int:
        """Held events no broker has (the backlog): ``len`` less the solo journal's locally delivered copies."""
        return await asyncio.to_thread(self._store.undelivered)

    @property
    def pending(self) -> bool:
        """Events are held or being appended: a new durable event must queue behind them to keep order."""
        return self._store.count + self._appending > 0

    async def append(self, routing_key: str, body: bytes, headers: Mapping[str, Any] | None = None) -> None:
        """Hold one event (fsynced before this returns); ``OutboxFull`` when it does not fit."""
        entry = (routing_key, body, orjson.dumps(dict(headers)) if headers else None)
        self._appending += 1
        try:
            await asyncio.to_thread(self._store.append, [entry], self.max_events, self.max_bytes)
        finally:
            self._appending -= 1

    async def flush(self, transport: Transport) -> int:
        """Publish every held event in order with confirms and forget each batch once confirmed; returns how
        many were forwarded. Stops at the first failure (the transport's error), keeping the rest."""
        sent = 0
        while True:
            generation, batch = await asyncio.to_thread(self._store.head)
            if not batch:
                break
            confirmed: int | None = None
            try:
                for entry in batch:
                    await transport.publish(entry.routing_key, entry.body, headers=entry.headers, durable=True)
                    confirmed = entry.id
                    sent += 1
                    self.forwarded += 1
            finally:  # also when cancelled: what the broker confirmed must not be sent again needlessly
                if confirmed is not None:
                    self._store.delete_through(confirmed, generation)
        if sent:
            log.info("outbox: forwarded %d held durable events in order (%d left)", sent, len(self))
        return sent

    async def run_drain(self, transport: Transport, *, poll_s: float = 0.25, max_backoff_s: float = 5.0) -> None:
        """Until cancelled: whenever events are held and ``transport`` is connected, flush them. A failed flush
        is retried with capped exponential backoff; a broker that refuses an event (nack) blocks the ones
        behind it rather than reordering or dropping them, so the outbox then fills and producers are told."""
        failures = 0
        while True:
            if not (len(self) and is_connected(transport)):
                await asyncio.sleep(poll_s)
                continue
            try:
                await self.flush(transport)
                failures = 0
            except TransportError as exc:
                failures += 1
                delay = min(max_backoff_s, poll_s * 2 ** min(failures, 10))
                log.warning("outbox: %d held durable events wait for the broker (%s); retry in %.1fs",
                            len(self), exc, delay)
                await asyncio.sleep(delay)

    def __repr__(self) -> str:
        return f"<Outbox {self.path} held={len(self)} bytes={self._store.bytes} forwarded={self.forwarded}>"


def outbox_for(settings: Settings) -> Outbox:
    """A node's outbox: in its state directory, bounded by ``THATDAM_OUTBOX_MAX_EVENTS`` and ``_MAX_BYTES``."""
    return Outbox(settings.state_dir, max_events=settings.outbox_max_events, max_bytes=settings.outbox_max_bytes)
