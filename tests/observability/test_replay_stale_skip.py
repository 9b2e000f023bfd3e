"""``replay`` on a source whose ``--since`` attaches early (a RabbitMQ stream) skips the leading envelopes older
than the instant; an envelope ``time`` without a timezone is read as UTC there, instead of crashing bus-tail on
the comparison with the aware instant. No broker: the source is a list."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Iterator
from datetime import UTC, datetime

import orjson
import pytest

from thatdam_bus.recorder.replay import Window, replay
from thatdam_bus.recorder.ring_format import Entry

SINCE = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


class EarlySource:
    """Like a stream: ``since`` attaches at the start of what it holds, and ``follow`` ends when it runs out."""

    exact_since = False

    def __init__(self, times: list[str]) -> None:
        self.entries = [Entry(offset, 0.0, "capture.obs.seq", {}, orjson.dumps({"time": moment}))
                        for offset, moment in enumerate(times)]

    async def end(self) -> int:
        return len(self.entries)

    def first(self) -> int:
        return 0

    def since(self, moment: datetime) -> int:
        return 0

    async def history(self, start: int, end: int) -> AsyncGenerator[Entry, None]:
        for entry in self.entries[start:end]:
            yield entry

    async def follow(self, start: int) -> AsyncGenerator[Entry, None]:
        for entry in self.entries[start:]:
            yield entry


async def replayed(times: list[str]) -> list[int]:
    """The offsets ``replay`` delivers from ``--since SINCE``."""
    delivered: list[int] = []

    async def deliver(entry: Entry) -> bool:
        delivered.append(entry.offset)
        return True

    await replay(EarlySource(times), Window(since=SINCE), lambda _entry: True, deliver)
    return delivered


@pytest.fixture
def local_time_ahead_of_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time 5h30 ahead of UTC, so a naive time read as local time would move by hours."""
    monkeypatch.setenv("TZ", "XST-5:30")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("local_time_ahead_of_utc")
async def test_a_naive_envelope_time_is_compared_as_utc() -> None:
    """Naive 11:59:59 is a second before the window (skipped), naive 12:00:01 a second inside it (the first one
    delivered, and from there everything, older or not: only leading entries are skipped)."""
    assert await replayed(["2026-01-01T11:59:59", "2026-01-01T12:00:01", "2026-01-01T11:00:00"]) == [1, 2]


async def test_aware_envelope_times_in_other_zones_are_compared_by_instant() -> None:
    """13:29:59+01:30 is 11:59:59 UTC (skipped); 07:00:01-05:00 is 12:00:01 UTC (delivered)."""
    assert await replayed(["2026-01-01T13:29:59+01:30", "2026-01-01T07:00:01-05:00"]) == [1]
