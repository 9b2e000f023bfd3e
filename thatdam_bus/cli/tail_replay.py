"""``bus-tail --since D | --last N | --from-start`` (and ``--trace ID``): history from the flight recorder, then
live, from one ordered log (see ``thatdam_bus.recorder.replay`` for why that has no gap and no duplicate).

The recorder is the RabbitMQ stream ``<prefix>.recorder`` when ``THATDAM_AMQP_URL`` is set and reachable, else
the solo node's ring under ``THATDAM_STATE_DIR`` (readable while the node is down, too). Without one, bus-tail
says so on stderr and shows live events only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from aiormq.exceptions import AMQPError

from thatdam_bus.config import Settings
from thatdam_bus.errors import ConfigError
from thatdam_bus.recorder.amqp_stream import StreamSource, stream_name
from thatdam_bus.recorder.disk_ring import RECORDER_DIR
from thatdam_bus.recorder.durations import parse_duration
from thatdam_bus.recorder.replay import RecorderSource, RingSource, Window, replay
from thatdam_bus.recorder.ring_format import Entry
from thatdam_bus.recorder.ring_reader import RingReader
from thatdam_bus.topics import topic_matches
from thatdam_bus.tracing import is_trace_id, trace_id_of
from thatdam_bus.transports.base import Delivery


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    window = parser.add_mutually_exclusive_group()
    window.add_argument("--since", metavar="D", help="replay the flight recorder from D ago (90s, 10m, 2h, 1d), "
                        "then continue live")
    window.add_argument("--last", type=int, metavar="N", help="replay the last N matching events, then live")
    window.add_argument("--from-start", action="store_true", help="replay all the recorder holds, then live")
    parser.add_argument("--trace", metavar="ID", help="only events of this trace (a 32-hex trace id or a "
                        "traceparent); replays the recorder from the start unless --since/--last say otherwise")


def trace_filter(value: str | None) -> str | None:
    """The trace id ``--trace`` names; ``ConfigError`` (exit 2) for anything else."""
    if value is None:
        return None
    trace = value.lower() if is_trace_id(value.lower()) else trace_id_of(value.lower())
    if trace is None:
        raise ConfigError(f"--trace wants a 32-hex trace id or a traceparent, not {value!r}")
    return trace


def window_of(args: argparse.Namespace) -> Window | None:
    """The replay window the options ask for, or None for live only."""
    if args.since is not None:
        try:
            return Window(since=datetime.now(UTC) - timedelta(seconds=parse_duration(args.since)))
        except ValueError as exc:
            raise ConfigError(f"--since: {exc}") from None
    if args.last is not None:
        if args.last < 1:
            raise ConfigError("--last wants N >= 1")
        return Window(last=args.last)
    if args.from_start or args.trace is not None:
        return Window()
    return None


@contextlib.asynccontextmanager
async def open_recorder(settings: Settings) -> AsyncIterator[RecorderSource | None]:
    """The stream when RabbitMQ is configured and reachable, else the solo ring; None when neither exists."""
    if settings.amqp_url is not None:
        stack = contextlib.AsyncExitStack()
        try:
            stream = await stack.enter_async_context(
                StreamSource.open(str(settings.amqp_url), settings.prefix, timeout=settings.connect_timeout))
        except (OSError, TimeoutError, AMQPError):
            pass  # unreachable: like every tool, fall back to the solo node's
        else:
            async with stack:
                if stream is None:
                    _warn(f"no flight recorder on RabbitMQ (the leader declares {stream_name(settings.prefix)}); "
                          "showing live events only")
                yield stream
            return
    reader = RingReader(settings.state_dir / RECORDER_DIR, on_gap=_gap)
    if not reader.exists():
        _warn(f"no flight recorder under {settings.state_dir / RECORDER_DIR}; showing live events only")
        yield None
        return
    yield RingSource(reader)


async def replay_tail(args: argparse.Namespace, source: RecorderSource, window: Window, printer: object) -> None:
    """Replay into ``printer`` (a ``tail.Printer``) until ``--count`` or ``--timeout``."""
    on_delivery = printer.on_delivery  # type: ignore[attr-defined]
    done: asyncio.Event = printer.done  # type: ignore[attr-defined]
    wants = printer.wants  # type: ignore[attr-defined]
    patterns = tuple(args.patterns)

    def matches(entry: Entry) -> bool:
        return any(topic_matches(p, entry.routing_key) for p in patterns) and wants(_delivery(entry))

    async def deliver(entry: Entry) -> bool:
        if any(topic_matches(p, entry.routing_key) for p in patterns):
            await on_delivery(_delivery(entry))
        return not done.is_set()

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(args.timeout):
            await replay(source, window, matches, deliver)


def _delivery(entry: Entry) -> Delivery:
    return Delivery(entry.routing_key, entry.body, entry.headers)


def _gap(expected: int, found: int) -> None:
    _warn(f"recorder entries {expected}..{found - 1} are missing: expired before they could be read, or never "
          "recorded (see the node's log)")


def _warn(message: str) -> None:
    print(f"bus-tail: {message}", file=sys.stderr, flush=True)
