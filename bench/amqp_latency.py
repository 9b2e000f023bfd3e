"""Publish-to-handler latency over RabbitMQ at a fixed rate (default 1,000 events/s): ours vs raw aio-pika.

    .venv/bin/python bench/amqp_latency.py [--rate 1000] [--seconds 5] [--rounds 6]

The publisher paces itself (every millisecond it publishes what is due) and stamps each event with
``time.monotonic_ns()``; the handler in the consumer process (its own process) subtracts it on arrival. Raw:
the stamp in a re-encoded body, read back with orjson. Ours: ``Bus.publish`` of a payload carrying the stamp,
read from the validated ``event.data``. Transient events, no confirms. Target: ours p99 <= 1.3x raw p99.
"""

from __future__ import annotations

import argparse
import asyncio

from amqp_kit import BusPublisher, Plan, RawPublisher, raw_against_bus, run_paced
from common import Row, command_line, medians, unique_prefix

TARGET = 1.3


async def main(args: argparse.Namespace) -> Row:
    plan = Plan(unique_prefix("latency"), latency=True, prefetch=args.prefetch)
    expect = int(args.rate * args.seconds)

    async def drive(publisher: RawPublisher | BusPublisher) -> None:
        await run_paced(publisher.publish, args.rate, args.seconds)

    runs = await raw_against_bus(plan, drive, expect, args.rounds, "rate,p50_ms,p99_ms")
    base, ours = medians(runs["raw"]), medians(runs["bus"])
    row = Row("amqp_latency", f"RabbitMQ publish-to-handler latency at {args.rate:g} events/s (p99)",
              command_line(), "p99 latency", "ms", base["p99_ms"], ours["p99_ms"], f"<= {TARGET}x",
              ours["p99_ms"] <= TARGET * base["p99_ms"], args.rounds,
              extra={"rate": args.rate, "seconds": args.seconds, "baseline_medians": base, "ours_medians": ours},
              runs=runs)
    row.report()
    row.save()
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--prefetch", type=int, default=256)
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
