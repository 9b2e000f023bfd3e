"""Batching for high-rate channels over RabbitMQ: ours, batched, vs raw aio-pika with one event per message.

    .venv/bin/python bench/amqp_batching.py [--rounds 6] [--count 30000] [--max-events 64] [--linger 0]
                                            [--compare-linger 0.001]

Phase 1 (interleaved rounds): events/s end to end, as in ``amqp_throughput``: raw aio-pika publishing one
event per message vs ``Bus.publish`` on an ``AmqpTransport(batch=BatchPolicy(("bench.#",), ...))``, whose
consumer (in its own process) unpacks every batch into typed handler calls (decode + validation per event).
Phase 2: ours again, paced at ``--load`` (default 3) times the raw median of phase 1, measuring
publish-to-handler latency, interleaved with the same at ``--compare-linger``. ``--linger 0`` closes a batch
at the end of the loop iteration that opened it (or when full); a positive linger waits that long for more.
Target: events/s >= 3x raw with p99 <= 5 ms at that load.
"""

from __future__ import annotations

import argparse
import asyncio

from amqp_kit import BusPublisher, Plan, RawPublisher, consumer_process, one_round, run_paced
from common import PATTERN, Row, command_line, interleave, median, medians, unique_prefix

from thatdam_bus.transports.batching import BatchPolicy

TARGET_RATIO, TARGET_P99_MS = 3.0, 5.0


async def main(args: argparse.Namespace) -> Row:
    plan = Plan(unique_prefix("batching"), prefetch=args.prefetch)
    policy = BatchPolicy(patterns=(PATTERN,), max_events=args.max_events, linger=args.linger)
    slower = BatchPolicy(patterns=(PATTERN,), max_events=args.max_events, linger=args.compare_linger)

    def batched(chosen: BatchPolicy = policy) -> BusPublisher:
        return BusPublisher(plan.prefix, False, plan.queue_type, batch=chosen)

    async def drive(publisher: RawPublisher | BusPublisher) -> None:
        for _ in range(args.count):
            await publisher.publish()

    async with consumer_process(plan) as child:
        runs = await interleave({
            "raw": lambda: one_round(child, plan, "raw", RawPublisher(plan.prefix, False), drive, args.count),
            "batched": lambda: one_round(child, plan, "bus", batched(), drive, args.count),
        }, args.rounds, show="rate,publisher_cpu_us,consumer_cpu_us")
        load = args.load * median([run["rate"] for run in runs["raw"]])
        print(f"phase 2: ours paced at {load:,.0f} events/s ({args.load:g}x the raw median)", flush=True)
        paced = Plan(plan.prefix, prefetch=args.prefetch, latency=True)

        async def drive_paced(publisher: BusPublisher) -> None:
            await run_paced(publisher.publish, load, args.seconds)

        expect = int(load * args.seconds)
        loaded = await interleave({
            "paced": lambda: one_round(child, paced, "bus", batched(), drive_paced, expect),
            f"paced, linger {args.compare_linger * 1000:g} ms": lambda: one_round(
                child, paced, "bus", batched(slower), drive_paced, expect),
        }, args.rounds, show="rate,p50_ms,p99_ms")
    base, ours, at_load = medians(runs["raw"]), medians(runs["batched"]), medians(loaded["paced"])
    compared = medians(loaded[f"paced, linger {args.compare_linger * 1000:g} ms"])
    sustained = at_load["rate"] >= 0.97 * load
    passed = ours["rate"] >= TARGET_RATIO * base["rate"] and at_load["p99_ms"] <= TARGET_P99_MS and sustained
    row = Row("amqp_batching", "RabbitMQ batching (several events per message) vs raw one per message",
              command_line(), "events/s", "events/s", base["rate"], ours["rate"],
              f">= {TARGET_RATIO:g}x, p99 <= {TARGET_P99_MS:g} ms at {TARGET_RATIO:g}x load", passed, args.rounds,
              extra={"count": args.count, "max_events": args.max_events, "linger_s": args.linger,
                     "load_events_per_s": load, "load_rate": at_load["rate"], "load_p50_ms": at_load["p50_ms"],
                     "load_p99_ms": at_load["p99_ms"], "compare_linger_s": args.compare_linger,
                     "compare_p50_ms": compared["p50_ms"], "compare_p99_ms": compared["p99_ms"],
                     "baseline_medians": base, "ours_medians": ours},
              runs={**runs, **loaded})
    row.report()
    print(f"  at {load:,.0f} events/s: sustained {at_load['rate']:,.0f}/s, p50 {at_load['p50_ms']:.2f} ms, "
          f"p99 {at_load['p99_ms']:.2f} ms (linger {args.compare_linger * 1000:g} ms: p50 {compared['p50_ms']:.2f} ms, "
          f"p99 {compared['p99_ms']:.2f} ms)", flush=True)
    row.save()
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--count", type=int, default=30_000)
    parser.add_argument("--prefetch", type=int, default=256)
    parser.add_argument("--max-events", type=int, default=64)
    parser.add_argument("--linger", type=float, default=0.0)
    parser.add_argument("--compare-linger", type=float, default=0.001)
    parser.add_argument("--load", type=float, default=TARGET_RATIO)
    parser.add_argument("--seconds", type=float, default=4.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
