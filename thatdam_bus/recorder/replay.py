"""Replaying the flight recorder, then following it live: what ``bus-tail --since/--last/--from-start`` runs.

Technique: consume the recorder itself from the chosen offset and keep consuming it. History and live events
come from one ordered log (a RabbitMQ stream, or the solo ring's segments), so the seam between them has no gap
and no duplicate by construction; no live tap, no buffering, no dedupe by id. What a tap would add (events
while the recorder is down) the recorder does not have, and neither does the replay.

Where to start:

* ``--from-start``: the oldest entry still kept;
* ``--since D``: the ring knows when it recorded each entry (exact); a stream starts at the first chunk stored
  within that whole second (up to a second earlier), so leading entries whose envelope ``time`` is older are
  skipped;
* ``--last N``: the last N entries *that pass the filters*, before a seam (the ring's end when bus-tail
  starts; on a stream, a marker it appends, see ``amqp_stream``). Found by counting matches in windows that
  grow fourfold back from the seam, then replayed from there, skipping the surplus.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from thatdam_bus.recorder.ring_format import Entry
from thatdam_bus.recorder.ring_reader import RingReader

FIRST_WINDOW = 256


class RecorderSource(Protocol):
    exact_since: bool

    async def end(self) -> int: ...

    def first(self) -> Any: ...

    def since(self, moment: datetime) -> Any: ...

    def history(self, start: Any, end: int) -> AsyncGenerator[Entry, None]: ...

    def follow(self, start: Any) -> AsyncGenerator[Entry, None]: ...


class RingSource:
    """The solo ring as a ``RecorderSource``; offsets are the ring's own."""

    exact_since = True

    def __init__(self, reader: RingReader) -> None:
        self.reader = reader
        self._end: int | None = None

    async def end(self) -> int:
        if self._end is None:
            self._end = self.reader.end_offset()
        return self._end

    def first(self) -> int:
        return self.reader.first_offset()

    def since(self, moment: datetime) -> int:
        return self.reader.offset_since(moment.timestamp())

    async def history(self, start: int, end: int) -> AsyncGenerator[Entry, None]:
        for entry in self.reader.read(start, end):
            yield entry

    def follow(self, start: int) -> AsyncGenerator[Entry, None]:
        return self.reader.follow(start)


@dataclass(frozen=True)
class Window:
    """Where a replay starts: exactly one of ``since``, ``last``, or neither (the start)."""

    since: datetime | None = None
    last: int | None = None


Matches = Callable[[Entry], bool]
Deliver = Callable[[Entry], Awaitable[bool]]
"""Takes one entry; returns False to stop the replay (``--count`` reached, reader gone)."""


async def replay(source: RecorderSource, window: Window, matches: Matches, deliver: Deliver) -> None:
    """Deliver history from ``window`` in recorder order, then live entries as they come, until told to stop."""
    skip, end = 0, -1
    if window.last is not None:
        start, skip, end = await last_start(source, window.last, matches)
    elif window.since is not None:
        start = source.since(window.since)
    else:
        start = source.first()
    stale_until = None if source.exact_since or window.since is None else window.since
    async with contextlib.aclosing(source.follow(start)) as entries:
        async for entry in entries:
            if stale_until is not None:
                moment = _envelope_time(entry.body)
                if moment is not None and moment < stale_until:
                    continue
                stale_until = None
            if skip and entry.offset < end and matches(entry):
                skip -= 1
                continue
            if not await deliver(entry):
                return


async def last_start(source: RecorderSource, count: int, matches: Matches) -> tuple[int, int, int]:
    """(start offset, matching entries to skip from there, seam) so that exactly the last ``count`` matching
    entries before the seam remain (fewer when the recorder holds fewer)."""
    end = await source.end()
    width = max(count, FIRST_WINDOW)
    while True:
        start = max(0, end - width)
        found, lowest = 0, None
        async with contextlib.aclosing(source.history(start, end)) as entries:
            async for entry in entries:
                lowest = entry.offset if lowest is None else lowest
                found += matches(entry)
        if found >= count or start == 0 or lowest is None or lowest > start:
            return start, max(0, found - count), end
        width *= 4


def _envelope_time(body: bytes) -> datetime | None:
    """The envelope's ``time``, timezone-aware: one written without a zone is taken as UTC (the bus stamps UTC),
    because comparing a naive time with the aware ``--since`` instant raises instead of answering."""
    try:
        document = orjson.loads(body)
        moment = datetime.fromisoformat(document["time"]) if isinstance(document, dict) else None
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment
