"""``bus-tail``: tap live events without stealing work (an exclusive auto-delete queue per run).

Finds the bus by itself: RabbitMQ when ``THATDAM_AMQP_URL`` is set and reachable, else the solo node's socket
under ``THATDAM_STATE_DIR``. The tap queue is exclusive and auto-delete, so it disappears with the process and
never competes with a node for work. ``--json`` prints one object per line (for jq); the default is one
coloured line per event on a terminal, plain when piped or when ``NO_COLOR`` is set. Nothing on the bus can
crash it: undecodable bodies are reported (``--raw`` shows them) and the next event prints as usual.

With ``--since D``, ``--last N`` or ``--from-start`` (and ``--trace ID``) it first replays the flight recorder,
then continues live from the same log (``tail_replay``).

Exit codes: 0 done (``--count`` reached, ``--timeout`` passed, or the reader of a pipe went away); 2 bad
configuration or no bus; 3 ``--timeout`` passed before ``--count`` events arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from thatdam_bus.cli.logs import configure_logging
from thatdam_bus.cli.tail_render import CauseTree, Record, Style, human_line, inspect, json_line
from thatdam_bus.cli.tail_replay import add_replay_arguments, open_recorder, replay_tail, trace_filter, window_of
from thatdam_bus.config import load_settings
from thatdam_bus.security.keys import Keyring, load_keyring
from thatdam_bus.tracing import trace_id_of
from thatdam_bus.transports import connect_tool_transport
from thatdam_bus.transports.base import ACK, Delivery, Outcome, QueueSpec

EXIT_TIMEOUT = 3


def add_tail_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("patterns", nargs="*", default=["#"], help="binding patterns (default: #)")
    parser.add_argument("--type", action="append", default=[], metavar="GLOB", dest="types",
                        help="only this CloudEvents type, exact or glob (e.g. '*.heartbeat.*'); repeatable")
    parser.add_argument("--node", action="append", default=[], metavar="GLOB", dest="nodes",
                        help="only events whose source names this node id (exact or glob); repeatable")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--raw", action="store_true", help="show undecodable bodies (truncated)")
    parser.add_argument("--headers", action="store_true", help="show the message headers")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                        help="colour the human output (auto: on a terminal unless NO_COLOR is set)")
    parser.add_argument("--count", type=int, default=None, help="exit after N events")
    parser.add_argument("--timeout", type=float, default=None, help="exit after S seconds")
    add_replay_arguments(parser)


@dataclass(frozen=True)
class EventFilter:
    """``--type`` and ``--node``: globs, OR within one option, AND across them; ``--trace``: one trace id.
    Bodies that did not decode have neither a type nor a node nor a trace, so any filter hides them."""

    types: Sequence[str] = ()
    nodes: Sequence[str] = ()
    trace: str | None = None

    def __call__(self, record: Record) -> bool:
        if (self.types or self.nodes or self.trace) and record.event is None:
            return False
        if self.trace is not None and trace_id_of(record.event.get("traceparent") if record.event else None) \
                != self.trace:
            return False
        return _any_match(record.event_type, self.types) and _any_match(record.node, self.nodes)


def _any_match(value: str | None, globs: Sequence[str]) -> bool:
    return not globs or (value is not None and any(fnmatchcase(value, glob) for glob in globs))


def use_colour(choice: str, stream: object = sys.stdout) -> bool:
    """https://no-color.org: a non-empty ``NO_COLOR`` turns colour off unless asked for explicitly."""
    if choice != "auto":
        return choice == "always"
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and not os.environ.get("NO_COLOR")


@dataclass
class Printer:
    """Turns deliveries into lines and counts the ones that passed the filter."""

    args: argparse.Namespace
    keyring: Keyring
    max_bytes: int
    style: Style
    matches: EventFilter
    printed: int = 0
    reader_gone: bool = False
    """stdout is a pipe whose reader exited (``bus-tail | head -3``): a normal way to stop."""

    def __post_init__(self) -> None:
        self.done = asyncio.Event()
        self.tree = CauseTree() if self.matches.trace is not None else None

    def wants(self, delivery: Delivery) -> bool:
        """Would this delivery be printed (the filters; not ``--count``)?"""
        return self.matches(inspect(delivery, max_bytes=self.max_bytes, keyring=self.keyring))

    async def on_delivery(self, delivery: Delivery) -> Outcome:
        if self.done.is_set():
            return ACK  # --count reached: deliveries already in flight are not printed
        record = inspect(delivery, max_bytes=self.max_bytes, keyring=self.keyring)
        if not self.matches(record):
            return ACK
        if self.args.json:
            line = json_line(record, raw=self.args.raw, headers=self.args.headers)
        else:
            line = human_line(record, self.style, raw=self.args.raw, headers=self.args.headers, tree=self.tree)
        try:
            print(line, flush=True)
        except BrokenPipeError:
            # Raised here it would only reach the transport, which retries a callback that raises.
            self.reader_gone = True
            self.done.set()
            return ACK
        self.printed += 1
        if self.args.count is not None and self.printed >= self.args.count:
            self.done.set()
        return ACK


async def tail(args: argparse.Namespace) -> int:
    settings = load_settings()
    printer = Printer(args, load_keyring(settings), settings.max_message_bytes, Style(use_colour(args.color)),
                      EventFilter(tuple(args.types), tuple(args.nodes), trace_filter(args.trace)))
    window = window_of(args)
    if window is not None:
        async with open_recorder(settings) as source:
            if source is not None:
                await replay_tail(args, source, window, printer)
                return _exit_code(args, printer)
    transport = await connect_tool_transport(settings)
    async with transport:
        await transport.subscribe(QueueSpec(patterns=tuple(args.patterns), prefetch=256), printer.on_delivery)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.timeout):
                await printer.done.wait()
    return _exit_code(args, printer)


def _exit_code(args: argparse.Namespace, printer: Printer) -> int:
    if printer.reader_gone:
        # Point stdout at /dev/null so the interpreter's final flush does not report the broken pipe again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0 if args.count is None or printer.printed >= args.count else EXIT_TIMEOUT


def run_tail(args: argparse.Namespace) -> int:
    configure_logging("WARNING")
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")  # a non-UTF-8 terminal still gets every line
    return asyncio.run(tail(args))


def main(argv: list[str] | None = None) -> int:
    from thatdam_bus.cli.main import main as thatdam_main

    return thatdam_main(["tail", *(sys.argv[1:] if argv is None else argv)])
