"""Embedded broker in one process, 3 subscribers: ours (decode + validation) vs a bare asyncio topic router.

    .venv/bin/python bench/embedded_inprocess.py [--rounds 6] [--count 30000] [--subscribers 3]

Baseline: a bare in-process topic router: one bounded ``asyncio.Queue`` per subscriber (``put`` waits when
full), routes cached per routing key (``topics.topic_matches`` on a miss), the event dict encoded once with
orjson per publish and decoded with orjson by each subscriber task, no validation; it gives the loop a turn on
the same rule as ours (``embedded.should_yield``: after each burst of 32), which makes it about 6 % faster
than letting the publisher run until a queue is full. Ours: ``Bus.publish``
(envelope build + encode) -> ``EmbeddedTransport`` -> one ``HandlerHost`` handler per subscriber (ephemeral
fan-out queues) -> dispatch (size check, decode, type check, model validation) -> typed handler.
Figure: events published per second until every subscriber handled all of them. Target: ours >= 0.5x.
Also printed: the codec floor (``codec_floor``), the rate of our per-event work alone, as a ratio to the bare router.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from amqp_kit import sample_envelope
from common import PATTERN, ROUTING_KEY, Row, Tick, interleave, median, medians, throughput_row

from thatdam_bus import Role, load_settings
from thatdam_bus.context import HandlerContext
from thatdam_bus.dispatch import decode_for
from thatdam_bus.envelope import Envelope, encode
from thatdam_bus.node.services import HandlerHost
from thatdam_bus.publisher import Bus
from thatdam_bus.service import Service
from thatdam_bus.topics import topic_matches
from thatdam_bus.transports.embedded import EmbeddedTransport, should_yield

TARGET = 0.5
QUEUE_LIMIT = 10_000


class BareRouter:
    """The baseline: bounded queues, cached routes, orjson, and our burst yield; nothing else."""

    def __init__(self) -> None:
        self._bindings: list[tuple[str, asyncio.Queue[bytes]]] = []
        self._routes: dict[str, list[asyncio.Queue[bytes]]] = {}

    def subscribe(self, pattern: str) -> asyncio.Queue[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_LIMIT)
        self._bindings.append((pattern, queue))
        self._routes.clear()
        return queue

    async def publish(self, routing_key: str, event: dict[str, Any]) -> None:
        queues = self._routes.get(routing_key)
        if queues is None:
            queues = self._routes[routing_key] = [q for p, q in self._bindings if topic_matches(p, routing_key)]
        body = orjson.dumps(event)
        deepest = 0
        for queue in queues:
            await queue.put(body)
            deepest = max(deepest, queue.qsize())
        if should_yield(deepest, QUEUE_LIMIT // 2):
            await asyncio.sleep(0)


class Counter:
    def __init__(self, subscribers: int, expect: int) -> None:
        self.left = subscribers * expect
        self.done = asyncio.Event()

    def hit(self) -> None:
        self.left -= 1
        if self.left <= 0:
            self.done.set()


async def bare_round(count: int, subscribers: int) -> dict[str, Any]:
    router, counter = BareRouter(), Counter(subscribers, count)
    template = orjson.loads(sample_envelope(False)[0])

    async def subscriber(queue: asyncio.Queue[bytes]) -> None:
        while True:
            event = orjson.loads(await queue.get())
            assert event["data"]["camera"]
            counter.hit()

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(subscriber(router.subscribe(PATTERN))) for _ in range(subscribers)]
        await asyncio.sleep(0)
        cpu, began = time.process_time(), time.perf_counter()
        for n in range(count):
            event = {**template, "data": {"camera": "cam0", "n": n, "sent_ns": time.monotonic_ns()}}
            await router.publish(ROUTING_KEY, event)
        await counter.done.wait()
        figures = _figures(count, subscribers, time.perf_counter() - began, time.process_time() - cpu)
        for task in tasks:
            task.cancel()
    return figures


def _service(index: int, counter: list[Counter]) -> Service:
    service = Service(f"sub{index}", roles={Role.SOLO})

    @service.on(PATTERN)
    async def sink(event: Envelope[Tick], ctx: HandlerContext) -> None:
        assert event.data.camera
        counter[0].hit()

    return service


async def bus_round(count: int, subscribers: int) -> dict[str, Any]:
    counter = [Counter(subscribers, count)]
    with tempfile.TemporaryDirectory(prefix="bench-embedded-") as tmp:
        settings = load_settings(state_dir=Path(tmp))
        async with EmbeddedTransport(prefix="bench", queue_limit=QUEUE_LIMIT) as transport:
            bus = Bus(transport, cluster="bench", node_id="n1")
            host = HandlerHost(bus, [_service(i, counter) for i in range(subscribers)], max_bytes=1 << 20,
                               settings=settings)
            await host.apply_role(Role.SOLO)
            try:
                cpu, began = time.process_time(), time.perf_counter()
                for n in range(count):
                    await bus.publish(Tick(camera="cam0", n=n, sent_ns=time.monotonic_ns()), ROUTING_KEY)
                async with asyncio.timeout(60):
                    await counter[0].done.wait()
                figures = _figures(count, subscribers, time.perf_counter() - began, time.process_time() - cpu)
                figures["dropped"] = sum(q.dropped for q in transport.broker.queues.values())
            finally:
                await host.stop_all()
    return figures


def codec_floor(count: int) -> float:
    """Events/s of our per-event work with no broker and no dispatch at all: payload, envelope, encode, and one
    ``decode_for`` (decode + validation; in process one decode is shared by every subscriber of the model,
    over the socket the one subscriber decodes). What ours could reach if transport and dispatch cost
    nothing: the bare router's rate times the target must stay below it for the target to be reachable."""
    spec = _service(0, [Counter(1, 1)]).handlers[0]
    bus = Bus(None, cluster="bench", node_id="n1")  # type: ignore[arg-type]
    began = time.perf_counter()
    for n in range(count):
        decode_for(spec, encode(bus.envelope(Tick(camera="cam0", n=n, sent_ns=time.monotonic_ns()))), 1 << 20)
    return count / (time.perf_counter() - began)


def report_codec_floor(count: int, rounds: int, bare_rate: float, bare: str, what: str) -> float:
    """The median ``codec_floor`` over ``rounds``, printed as a ratio to the bare variant's rate."""
    floor = median([codec_floor(count // 3) for _ in range(rounds)])
    print(f"  codec floor (payload + envelope + encode + {what}, no dispatch): {floor:,.0f} events/s = "
          f"{floor / bare_rate:.2f}x {bare}", flush=True)
    return floor


def _figures(count: int, subscribers: int, seconds: float, cpu_s: float) -> dict[str, Any]:
    return {"rate": count / seconds, "deliveries_per_s": subscribers * count / seconds,
            "cpu_us_per_event": 1e6 * cpu_s / count}


async def main(args: argparse.Namespace) -> Row:
    runs = await interleave({
        "bare": lambda: bare_round(args.count, args.subscribers),
        "bus": lambda: bus_round(args.count, args.subscribers),
    }, args.rounds, show="rate,deliveries_per_s,cpu_us_per_event")
    floor = report_codec_floor(args.count, args.rounds, medians(runs["bare"])["rate"], "the bare router",
                               "one shared decode/validate, no broker")
    title = f"Embedded broker in process, {args.subscribers} subscribers, decode + validation"
    return throughput_row("embedded_inprocess", title, runs, "bare", TARGET, args.rounds,
                          {"count": args.count, "subscribers": args.subscribers, "codec_floor_rate": floor})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--count", type=int, default=30_000)
    parser.add_argument("--subscribers", type=int, default=3)
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
