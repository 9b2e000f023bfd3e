"""``bus-tail``: tap live events without stealing work (an exclusive auto-delete queue per run).

Finds the bus by itself: RabbitMQ when ``THATDAM_AMQP_URL`` is set and reachable, else the solo node's socket
under ``THATDAM_STATE_DIR``. ``--json`` prints one object per line; undecodable bodies never crash it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import Any

import orjson

from thatdam_bus.cli.logs import configure_logging
from thatdam_bus.config import load_settings
from thatdam_bus.envelope import decode_raw
from thatdam_bus.errors import ContractError
from thatdam_bus.transports import connect_tool_transport
from thatdam_bus.transports.base import ACK, Delivery, Outcome, QueueSpec


def add_tail_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("patterns", nargs="*", default=["#"], help="binding patterns (default: #)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--count", type=int, default=None, help="exit after N events")
    parser.add_argument("--timeout", type=float, default=None, help="exit after S seconds")


def render(delivery: Delivery) -> dict[str, Any]:
    """The printed record: routing key plus the decoded envelope, or the reason it could not be decoded."""
    record: dict[str, Any] = {"routing_key": delivery.routing_key}
    try:
        record["event"] = decode_raw(delivery.body).model_dump(mode="json", exclude_none=True)
    except ContractError as exc:
        record["error"] = str(exc)
        record["raw"] = delivery.body[:512].decode("utf-8", "backslashreplace")
    return record


def human_line(record: dict[str, Any]) -> str:
    event = record.get("event")
    if event is None:
        return f"{record['routing_key']}  !! {record['error']}"
    data = orjson.dumps(event.get("data")).decode()
    return f"{event['time']}  {record['routing_key']}  {event['type']}  {event['source']}  {data[:200]}"


async def tail(args: argparse.Namespace) -> int:
    settings = load_settings()
    printed = 0
    done = asyncio.Event()

    async def on_event(delivery: Delivery) -> Outcome:
        nonlocal printed
        record = render(delivery)
        line = orjson.dumps(record).decode() if args.json else human_line(record)
        print(line, flush=True)
        printed += 1
        if args.count is not None and printed >= args.count:
            done.set()
        return ACK

    transport = await connect_tool_transport(settings)
    async with transport:
        await transport.subscribe(QueueSpec(patterns=tuple(args.patterns), prefetch=256), on_event)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.timeout):
                await done.wait()
    return 0 if args.count is None or printed >= args.count else 3


def run_tail(args: argparse.Namespace) -> int:
    configure_logging("WARNING")
    return asyncio.run(tail(args))


def main(argv: list[str] | None = None) -> int:
    from thatdam_bus.cli.main import main as thatdam_main

    return thatdam_main(["tail", *(sys.argv[1:] if argv is None else argv)])
