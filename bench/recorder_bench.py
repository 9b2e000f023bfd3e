"""The flight recorder's cost: ``Bus.publish`` throughput over RabbitMQ with the recorder stream on vs off.

    .venv/bin/python bench/recorder_bench.py [--mode confirms|transient|batched] [--rounds 6] [--count N] [--window 256]

Both variants publish the same events on a recorded channel (``capture.bench.cam0.tick``, under
``Patterns.RECORDED``) of one exchange, with the same durable classic sink queue bound (a node's work queue:
without one the baseline's messages would be unroutable, and dropping them costs the broker nothing). Off: the
recorder stream is not bound. On: the stream ``<prefix>.recorder`` declared and bound by the leader's own code
(``declare_recorder_stream``, default retention), so each event is also appended to it. Rounds alternate; before
an off round the stream's bindings are removed, before an on round the leader's declaration runs again
(idempotent). The stream keeps what earlier on rounds wrote (it cannot be purged); its retention bounds it.

* ``confirms``: durable events (persistent, confirmed by ``AmqpTransport``), ``--window`` publishes awaiting
  their confirm at once. RabbitMQ confirms a message once every queue it was routed to has it, the stream
  included, so the recorder's whole cost is in the figure. Rate = events / (last confirm - first publish).
* ``transient``: transient events, no confirms, published one after another; the round ends when the sink
  queue holds all of them (a passive declare polled every 20 ms), so credit flow from a stream that cannot keep
  up shows. Rate = events / (sink complete - first publish).
* ``batched``: the same transient events on a batched channel (``BatchPolicy`` on the routing key, up to 64
  events per message, closed at the end of the loop iteration), as a high-rate channel (frame-ready at high
  fps) is configured: the stream's cost is per message, so it is shared by the events of a batch. The sink
  (and the stream) hold batches; the round ends when the sink holds every batch the publisher sent.

A third variant, ``queue``, is the same-run reference for what any broker-side recorder must cost at least: no
stream, but a plain durable classic queue (our topology's arguments, purged each round) bound to the same
``Patterns.RECORDED``, i.e. one more destination for every event, the cheapest kind RabbitMQ has. Its ratio to
off is printed as the floor of a recorder that lives on the broker, and the stream's ratio to it as what the
stream costs beyond that.

Target: on >= 0.8x off (issue 9). Everything is under a unique ``bench-recorder-*`` prefix, deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import time
from pathlib import Path
from typing import Any

import aio_pika
from amqp_kit import run_window
from common import AMQP_URL, Row, Tick, Work, command_line, interleave, medians, ratio_text, unique_prefix
from nodes import cpu_seconds

from thatdam_bus import load_settings
from thatdam_bus.publisher import Bus
from thatdam_bus.recorder.amqp_stream import declare_recorder_stream, stream_name
from thatdam_bus.topics import Patterns
from thatdam_bus.transports.amqp import AmqpTransport
from thatdam_bus.transports.amqp_topology import Topology
from thatdam_bus.transports.batching import BatchPolicy

TARGET = 0.8
ROUTING_KEY = "capture.bench.cam0.tick"
SINK = "bench.sink"
EXTRA = "bench.extra"
POLL_S = 0.02
COUNTS = {"confirms": 15_000, "transient": 30_000, "batched": 60_000}
BATCH_EVENTS = 64


class Recorder:
    """The stream of one prefix, switched on (the leader's declaration) and off (its bindings removed)."""

    def __init__(self, prefix: str) -> None:
        settings = load_settings()
        self.prefix = prefix
        self.retention = {"max_age_s": settings.recorder_max_age, "max_bytes": settings.recorder_max_bytes,
                          "segment_bytes": settings.recorder_segment_bytes}

    async def on(self) -> None:
        await declare_recorder_stream(AMQP_URL, self.prefix, **self.retention)

    async def off(self) -> None:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(stream_name(self.prefix), passive=True)
            for pattern in Patterns.RECORDED:
                await queue.unbind(self.prefix, pattern)


class ExtraQueue:
    """The ``queue`` variant's destination: a classic queue bound where the recorder would be."""

    def __init__(self, prefix: str) -> None:
        self.name = f"{prefix}.{EXTRA}"
        self.prefix = prefix

    async def bind(self, bound: bool) -> None:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(self.name, durable=True,
                                                arguments=Topology(self.prefix).durable_arguments())
            for pattern in Patterns.RECORDED:
                await (queue.bind(self.prefix, pattern) if bound else queue.unbind(self.prefix, pattern))
            await queue.purge()


async def declare_sink(prefix: str) -> None:
    """The exchanges (our transport's core declaration) and the sink queue with our topology's arguments."""
    async with AmqpTransport(AMQP_URL, prefix=prefix):
        pass
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"{prefix}.{SINK}", durable=True,
                                            arguments=Topology(prefix).durable_arguments())
        await queue.bind(prefix, "capture.bench.#")


async def sink_depth(channel: aio_pika.abc.AbstractChannel, prefix: str) -> int:
    queue = await channel.declare_queue(f"{prefix}.{SINK}", passive=True)
    return int(queue.declaration_result.message_count or 0)


async def purge_sink(prefix: str) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"{prefix}.{SINK}", passive=True)
        await queue.purge()


async def cleanup(prefix: str) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        for queue in (f"{prefix}.{SINK}", f"{prefix}.{EXTRA}", stream_name(prefix), f"{prefix}.dead-letters"):
            await channel.queue_delete(queue)
        for exchange in (prefix, f"{prefix}.dlx"):
            await channel.exchange_delete(exchange)


def broker_cpu_s() -> float | None:
    """CPU seconds used so far by a RabbitMQ (``beam.smp``) on this machine, if one runs here and is readable."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "comm").read_text().strip() == "beam.smp":
                return cpu_seconds(int(proc.name))
        except OSError:
            continue
    return None


async def one_round(args: argparse.Namespace, prefix: str, switch: Any) -> dict[str, Any]:
    """Switch the recorder, empty the sink, then time ``--count`` publishes through ``Bus.publish``."""
    await switch()
    await purge_sink(prefix)
    durable = args.mode == "confirms"
    model, counter = (Work if durable else Tick), itertools.count()
    batch = BatchPolicy((ROUTING_KEY,), max_events=BATCH_EVENTS) if args.mode == "batched" else None
    async with AmqpTransport(AMQP_URL, prefix=prefix, batch=batch) as transport:
        bus = Bus(transport, cluster="bench", node_id="publisher")

        async def publish() -> None:
            await bus.publish(model(camera="cam0", n=next(counter), sent_ns=0), ROUTING_KEY)

        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            cpu, broker, start = time.process_time(), broker_cpu_s(), time.monotonic()
            if durable:
                await run_window(publish, args.count, args.window)
            else:
                for _ in range(args.count):
                    await publish()
                messages = args.count
                if transport.batcher is not None:
                    await transport.batcher.flush()
                    messages = transport.batcher.batches_sent
                async with asyncio.timeout(120):
                    while await sink_depth(channel, prefix) < messages:
                        await asyncio.sleep(POLL_S)
            seconds, cpu = time.monotonic() - start, time.process_time() - cpu
            broker_after = broker_cpu_s()
    figures = {"rate": args.count / seconds, "seconds": seconds, "publisher_cpu_us": 1e6 * cpu / args.count}
    if broker is not None and broker_after is not None:
        figures["broker_cpu_us"] = 1e6 * (broker_after - broker) / args.count
    return figures


async def main(args: argparse.Namespace) -> Row:
    prefix = unique_prefix("recorder")
    recorder, extra = Recorder(prefix), ExtraQueue(prefix)
    try:
        await declare_sink(prefix)
        await recorder.on()  # created once: later on rounds find it and only bind again

        async def switch(stream: bool, queue: bool) -> None:
            await (recorder.on() if stream else recorder.off())
            await extra.bind(queue)

        runs = await interleave({
            "off": lambda: one_round(args, prefix, lambda: switch(False, False)),
            "on": lambda: one_round(args, prefix, lambda: switch(True, False)),
            "queue": lambda: one_round(args, prefix, lambda: switch(False, True)),
        }, args.rounds, show="rate,publisher_cpu_us,broker_cpu_us")
    finally:
        await cleanup(prefix)
    return recorder_row(args, runs)


def cpu_ceiling(off: dict[str, float], on: dict[str, float]) -> dict[str, float]:
    """What the machine allows: with every core busy, ``on`` could publish at most cores / (its publisher's
    plus the broker's CPU per event); divided by the measured ``off`` rate, the best ratio this run permits.
    Printed with how busy each variant kept the cores, so a miss can be told from a machine limit."""
    cores = os.cpu_count() or 1
    cpu_off = (off["publisher_cpu_us"] + off["broker_cpu_us"]) / 1e6
    cpu_on = (on["publisher_cpu_us"] + on["broker_cpu_us"]) / 1e6
    figures = {"cores": cores, "cores_busy_off": off["rate"] * cpu_off, "cores_busy_on": on["rate"] * cpu_on,
               "ceiling_ratio": cores / cpu_on / off["rate"]}
    print(f"  CPU per event, publisher + broker: off {cpu_off * 1e6:.0f} us, on {cpu_on * 1e6:.0f} us; cores busy: "
          f"off {figures['cores_busy_off']:.2f}, on {figures['cores_busy_on']:.2f} of {cores}; best ratio with "
          f"every core busy: {figures['ceiling_ratio']:.3f}x", flush=True)
    return figures


def destination_floor(off: dict[str, float], on: dict[str, float], queue: dict[str, float]) -> dict[str, float]:
    """The ``queue`` variant against the other two: the most a recorder that is one more broker destination
    could keep of the off rate, and how much of that the stream keeps."""
    figures = {"queue_rate": queue["rate"], "queue_ratio": queue["rate"] / off["rate"],
               "stream_vs_queue": on["rate"] / queue["rate"]}
    print(f"  one more classic queue bound like the recorder (the cheapest destination): {queue['rate']:,.0f} "
          f"events/s = {ratio_text(figures['queue_ratio'])} off; the stream keeps "
          f"{ratio_text(figures['stream_vs_queue'])} of that", flush=True)
    return figures


def recorder_row(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]]) -> Row:
    off, on = medians(runs["off"]), medians(runs["on"])
    ceiling = cpu_ceiling(off, on) if "broker_cpu_us" in off and "broker_cpu_us" in on else {}
    floor = destination_floor(off, on, medians(runs["queue"]))
    what = {"confirms": f"persistent + confirms ({args.window} in flight)", "transient": "transient",
            "batched": f"transient, batched (up to {BATCH_EVENTS} events per message)"}[args.mode]
    row = Row(f"recorder_{args.mode}", f"Flight recorder on vs off: Bus.publish over RabbitMQ, {what}",
              command_line(), "events/s", "events/s", off["rate"], on["rate"], f">= {TARGET}x",
              on["rate"] >= TARGET * off["rate"], args.rounds,
              extra={"count": args.count, "window": args.window, "mode": args.mode, "routing_key": ROUTING_KEY,
                     "baseline_medians": off, "ours_medians": on, **ceiling, **floor}, runs=runs)
    row.report()
    row.save()
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=sorted(COUNTS), default="confirms")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--count", type=int, default=None, help="events per round (default: 15000 with "
                        "confirms, 30000 transient)")
    parser.add_argument("--window", type=int, default=256)
    args = parser.parse_args(argv)
    if args.count is None:
        args.count = COUNTS[args.mode]
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
