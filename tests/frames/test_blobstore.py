"""The blob store keeps its promises: content addressing, atomic writes, oldest-first retention, pins."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

import pytest

from thatdam_bus.frames import BlobStore


def blob(n: int, size: int = 100) -> bytes:
    return n.to_bytes(4, "big") * (size // 4)


def files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_put_is_content_addressed_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    stored = store.put(b"jpeg bytes")
    sha = hashlib.sha256(b"jpeg bytes").hexdigest()
    assert (stored.sha256, stored.size) == (sha, 10)
    assert stored.path == tmp_path.resolve() / sha[:2] / f"{sha}.jpg"
    assert stored.uri == stored.path.as_uri() and stored.uri.startswith("file:///")
    assert stored.path.read_bytes() == b"jpeg bytes"
    assert files(tmp_path) == [stored.path]
    assert store.put(b"jpeg bytes") == stored and len(store) == 1 and store.stats.deduplicated == 1


def test_count_cap_evicts_oldest_first(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, max_count=3)
    stored = [store.put(blob(n)) for n in range(5)]
    assert [s.sha256 in store for s in stored] == [False, False, True, True, True]
    assert files(tmp_path) == sorted(s.path for s in stored[2:])
    assert store.stats.evicted == 2 and store.total_bytes == 300


def test_byte_cap_evicts_oldest_first(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, max_bytes=250)
    stored = [store.put(blob(n)) for n in range(4)]
    assert [s.sha256 in store for s in stored] == [False, False, True, True]
    assert store.total_bytes == 200


def test_putting_the_same_bytes_again_makes_them_the_newest(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, max_count=3)
    a, b, _ = (store.put(blob(n)) for n in range(3))
    store.put(blob(0))
    store.put(blob(3))
    assert a.sha256 in store and b.sha256 not in store


def test_pinned_blobs_survive_eviction_until_unpinned(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, max_count=2)
    first = store.put(blob(0), pin=True)
    second = store.put(blob(1))
    store.pin(second.sha256)
    store.pin(second.sha256)  # two events reference it: two pins
    third = store.put(blob(2))
    assert {first.sha256, second.sha256, third.sha256} <= set(_index(store))  # over cap: all but new pinned
    fourth = store.put(blob(3))
    assert third.sha256 not in store and first.path.exists() and second.path.exists()
    store.unpin(first.sha256)
    assert first.sha256 not in store and not first.path.exists()
    store.unpin(second.sha256)
    assert second.sha256 in store and store.is_pinned(second.sha256)
    store.unpin(second.sha256)
    assert not store.is_pinned(second.sha256) and len(store) == 2  # back within the cap: nothing to evict
    fifth = store.put(blob(4))
    assert second.sha256 not in store and {fourth.sha256, fifth.sha256} == set(_index(store))


def _index(store: BlobStore) -> list[str]:
    return [p.stem for p in files(store.root)]


async def test_concurrent_writes_of_the_same_content_are_safe(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, max_count=4)
    results = await asyncio.gather(*(asyncio.to_thread(store.put, b"same frame") for _ in range(32)))
    assert len({r.sha256 for r in results}) == 1
    assert files(tmp_path) == [results[0].path] and results[0].path.read_bytes() == b"same frame"
    assert len(store) == 1 and store.total_bytes == 10


async def test_concurrent_writes_under_a_tight_cap_keep_disk_and_index_in_step(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, max_count=5)
    payloads = [blob(n % 12) for n in range(120)]  # repeats collide with evictions of the same sha
    await asyncio.gather(*(asyncio.to_thread(store.put, data) for data in payloads))
    assert len(store) == 5
    assert sorted(_index(store)) == sorted(sha for sha in _known(store))
    assert store.total_bytes == sum(p.stat().st_size for p in files(tmp_path))


def _known(store: BlobStore) -> list[str]:
    return [sha for sha in (hashlib.sha256(blob(n)).hexdigest() for n in range(12)) if sha in store]


def test_a_new_store_indexes_existing_blobs_by_age_and_sweeps_stale_temp_files(tmp_path: Path) -> None:
    first = BlobStore(tmp_path)
    stored = [first.put(blob(n)) for n in range(4)]
    for age, item in enumerate(reversed(stored)):  # oldest mtime for blob 0
        os.utime(item.path, (time.time() - 100 * (age + 1),) * 2)
    stale = stored[0].path.parent / f".{stored[0].sha256}.abc.tmp"
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 7200,) * 2)
    fresh = stored[0].path.parent / f".{stored[1].sha256}.def.tmp"
    fresh.write_bytes(b"being written")
    (tmp_path / "README").write_text("not a blob")

    second = BlobStore(tmp_path, max_count=2)
    assert [s.sha256 in second for s in stored] == [False, False, True, True]
    assert not stale.exists() and fresh.exists()
    assert second.total_bytes == 200


def test_invalid_caps_and_digests_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        BlobStore(tmp_path, max_count=0)
    with pytest.raises(ValueError):
        BlobStore(tmp_path).path_for("../../etc/passwd")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_blobs_in_their_grace_period_are_never_evicted(tmp_path: Path) -> None:
    """The cross-process claim check: an event processed within the grace period finds its blob, caps or not."""
    clock = Clock()
    store = BlobStore(tmp_path, max_count=2, grace_s=60, clock=clock)
    stored = [store.put(blob(n)) for n in range(4)]
    assert all(s.sha256 in store and s.path.exists() for s in stored), "all young: over the cap, none evicted"
    clock.now += 30
    late = store.put(blob(4))
    assert len(store) == 5
    clock.now += 31  # the first four are now past their grace period, the fifth is not
    newest = store.put(blob(5))
    assert [s.sha256 in store for s in [*stored, late, newest]] == [False, False, False, False, True, True]


def test_the_grace_period_survives_a_restart(tmp_path: Path) -> None:
    """Write times come from mtimes at start-up, so a restart does not expose young blobs to retention."""
    old, young = BlobStore(tmp_path).put(blob(0)), BlobStore(tmp_path).put(blob(1))
    os.utime(old.path, (time.time() - 600,) * 2)
    store = BlobStore(tmp_path, max_count=1, grace_s=300)
    assert old.sha256 not in store and young.sha256 in store and young.path.exists()
    store.put(blob(2))
    assert young.sha256 in store and len(store) == 2
