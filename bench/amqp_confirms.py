"""Bus over RabbitMQ, persistent events with publisher confirms in flight, durable queue: ours vs raw aio-pika.

    .venv/bin/python bench/amqp_confirms.py [--queue-type quorum|classic] [--rounds 6] [--count 20000]
                                            [--window 256]

Both sides keep ``--window`` publishes awaiting their confirm (that many tasks sharing one counter), never one
by one. Raw: ``Exchange.publish`` on a confirming channel, persistent. Ours: ``Bus.publish`` of a durable
payload (persistent, confirmed by ``AmqpTransport``) and a typed handler on the durable queue (with its
duplicate check). The consumer runs in its own process. Target: ours >= 0.9x raw.
"""

from __future__ import annotations

import argparse
import asyncio

from amqp_kit import BusPublisher, Plan, RawPublisher, raw_against_bus, run_window
from common import Row, throughput_row, unique_prefix

TARGET = 0.9


async def main(args: argparse.Namespace) -> Row:
    plan = Plan(unique_prefix("confirms"), durable=True, queue_type=args.queue_type, prefetch=args.prefetch)

    async def drive(publisher: RawPublisher | BusPublisher) -> None:
        await run_window(publisher.publish, args.count, args.window)

    runs = await raw_against_bus(plan, drive, args.count, args.rounds, "rate,publisher_cpu_us,consumer_cpu_us")
    title = f"RabbitMQ persistent + confirms ({args.window} in flight), {args.queue_type} queue"
    return throughput_row(f"amqp_confirms_{args.queue_type}", title, runs, "raw", TARGET, args.rounds,
                          {"count": args.count, "window": args.window, "queue_type": args.queue_type,
                           "prefetch": args.prefetch})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queue-type", choices=["quorum", "classic"], default="quorum")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--prefetch", type=int, default=256)
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
