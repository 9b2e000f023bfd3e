"""Bus over RabbitMQ, small transient events, consumer in its own process, no confirms: ours vs raw aio-pika.

    .venv/bin/python bench/amqp_throughput.py [--rounds 6] [--count 30000] [--prefetch 256]

Each round publishes ``--count`` events as fast as the publisher goes and times first publish -> last event
handled in the consumer process. Raw: ``Exchange.publish`` of a pre-encoded envelope / ``consume`` + ``ack``.
Ours: ``Bus.publish`` -> ``AmqpTransport`` -> ``HandlerHost`` -> typed handler. Target: ours >= 0.85x raw.
"""

from __future__ import annotations

import argparse
import asyncio

from amqp_kit import BusPublisher, Plan, RawPublisher, raw_against_bus
from common import Row, throughput_row, unique_prefix

TARGET = 0.85


async def main(args: argparse.Namespace) -> Row:
    plan = Plan(unique_prefix("tput"), prefetch=args.prefetch)

    async def drive(publisher: RawPublisher | BusPublisher) -> None:
        for _ in range(args.count):
            await publisher.publish()

    runs = await raw_against_bus(plan, drive, args.count, args.rounds, "rate,publisher_cpu_us,consumer_cpu_us")
    return throughput_row("amqp_throughput", "RabbitMQ throughput, transient, consumer in its own process", runs,
                          "raw", TARGET, args.rounds, {"count": args.count, "prefetch": args.prefetch})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--count", type=int, default=30_000)
    parser.add_argument("--prefetch", type=int, default=256)
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
