"""The on-disk format of the solo flight recorder: segment files of length-prefixed, checksummed records.

A segment is named by the offset of its first record (``00000000000000000042.seg``) and only ever appended to;
once a newer segment exists, the older one is complete. A record is::

    crc32 u32 | size u32 | offset u64 | time f64 | key_len u16 | headers_len u32 | key | headers (JSON) | body

little-endian; ``size`` counts the bytes after the fixed header, ``crc32`` covers everything after itself, and
``time`` is the wall-clock second the recorder appended it. A torn last record (a crash mid-write) fails its
length or checksum: readers stop there, and the writer truncates it when it opens the segment again.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import orjson

HEADER = struct.Struct("<IIQdHI")
SUFFIX = ".seg"


class Entry(NamedTuple):
    """One recorded event: its offset in the recorder, when it was recorded, and the message as published."""

    offset: int
    time: float
    routing_key: str
    headers: Mapping[str, Any]
    body: bytes


def segment_name(first_offset: int) -> str:
    return f"{first_offset:020d}{SUFFIX}"


def segments(directory: Path) -> list[tuple[int, Path]]:
    """The segment files of ``directory``, oldest first, as (first offset, path)."""
    found = []
    try:
        for path in directory.iterdir():
            if path.suffix == SUFFIX and path.stem.isdigit():
                found.append((int(path.stem), path))
    except FileNotFoundError:
        return []
    return sorted(found)


def encode_record(offset: int, when: float, routing_key: str, headers: Mapping[str, Any] | None,
                  body: bytes) -> bytes:
    key = routing_key.encode()
    meta = orjson.dumps(dict(headers)) if headers else b""
    size = len(key) + len(meta) + len(body)
    rest = HEADER.pack(0, size, offset, when, len(key), len(meta))[4:] + key + meta + body
    return struct.pack("<I", zlib.crc32(rest)) + rest


def decode_records(buffer: bytes | memoryview, start: int = 0) -> Iterator[tuple[Entry, int]]:
    """Complete, intact records from ``buffer[start:]`` with the position after each; stops at the first torn
    or corrupt one (the caller tells the two apart by whether more data can still arrive)."""
    view = memoryview(buffer)
    position = start
    while position + HEADER.size <= len(view):
        crc, size, offset, when, key_len, meta_len = HEADER.unpack_from(view, position)
        end = position + HEADER.size + size
        if end > len(view) or key_len + meta_len > size:
            return
        if zlib.crc32(view[position + 4:end]) != crc:
            return
        cursor = position + HEADER.size
        key = bytes(view[cursor:cursor + key_len]).decode(errors="replace")
        cursor += key_len
        meta = orjson.loads(view[cursor:cursor + meta_len]) if meta_len else {}
        cursor += meta_len
        yield Entry(offset, when, key, meta, bytes(view[cursor:end])), end
        position = end


def scan(path: Path) -> tuple[int, int | None]:
    """(bytes of intact records, last offset or None) of one segment file."""
    data = path.read_bytes()
    valid, last = 0, None
    for entry, end in decode_records(data):
        valid, last = end, entry.offset
    return valid, last
