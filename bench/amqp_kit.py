"""The RabbitMQ benches' two sides: a consumer child (raw aio-pika, or our bus) and the publishers.

Both variants use the same exchange (``<prefix>``, topic), the same queue (``<prefix>.bench.sink``, declared
with the arguments our topology gives durable work queues), the same prefetch and the same message: the raw
baseline publishes the bytes of an encoded envelope with the headers and properties our transport sets.

* raw consumer: ``queue.consume`` + ``message.ack()``, the body untouched (orjson only to read the timestamp
  when measuring latency);
* our consumer: ``AmqpTransport`` -> ``HandlerHost`` -> ``dispatch`` -> a typed handler of ``Envelope[Tick]``
  (size check, decode, type check, model validation, duplicate check on durable queues, context, call).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import orjson
from common import AMQP_URL, PATTERN, ROUTING_KEY, Child, Tick, Work, interleave, quantiles

from thatdam_bus import Role, load_settings
from thatdam_bus.context import HandlerContext
from thatdam_bus.envelope import Envelope, encode
from thatdam_bus.node.services import HandlerHost
from thatdam_bus.publisher import Bus
from thatdam_bus.service import Service
from thatdam_bus.transports.amqp import AmqpTransport
from thatdam_bus.transports.amqp_link import APP_ID, CONTENT_TYPE
from thatdam_bus.transports.amqp_topology import Topology
from thatdam_bus.transports.base import QueueKind, QueueSpec

SERVICE, HANDLER = "bench", "sink"


def queue_name(prefix: str) -> str:
    return f"{prefix}.{SERVICE}.{HANDLER}"


# -- the consumer child -------------------------------------------------------------------------------------


@dataclass
class Sink:
    """What a consumer saw in one round."""

    expect: int
    latency: bool
    count: int = 0
    first_ns: int = 0
    last_ns: int = 0
    latencies_us: list[float] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, sent_ns: int | None) -> None:
        now = time.monotonic_ns()
        if not self.count:
            self.first_ns = now
        self.count += 1
        self.last_ns = now
        if sent_ns is not None:
            self.latencies_us.append((now - sent_ns) / 1000)
        if self.count >= self.expect:
            self.done.set()


SINK: Sink | None = None


def _bench_service(durable: bool, prefetch: int) -> Service:
    service = Service(SERVICE, roles={Role.SOLO})
    model = Work if durable else Tick

    async def sink(event: Envelope[Tick], ctx: HandlerContext) -> None:
        assert SINK is not None
        SINK.record(event.data.sent_ns if SINK.latency else None)

    sink.__annotations__["event"] = Envelope[model]  # type: ignore[valid-type]
    sink.__name__ = HANDLER
    service.on(PATTERN, queue=QueueKind.DURABLE, prefetch=prefetch)(sink)
    return service


class Consumer:
    """One round's consumer in the child: set up, report ready, wait for ``expect`` events, tear down."""

    def __init__(self) -> None:
        self._close: list[Any] = []
        self._cpu = 0.0

    async def handle(self, request: dict[str, Any]) -> Any:
        if request["op"] == "setup":
            await self._setup(request)
            self._cpu = time.process_time()
            return "ready"
        return await self._collect(request["timeout"])

    async def _setup(self, request: dict[str, Any]) -> None:
        global SINK
        SINK = Sink(request["expect"], request["latency"])
        if request["variant"] == "raw":
            await self._raw(request)
        else:
            await self._bus(request)

    async def _raw(self, request: dict[str, Any]) -> None:
        connection = await aio_pika.connect(AMQP_URL)
        self._close.append(connection.close)
        channel = await connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=request["prefetch"])
        topology = Topology(request["prefix"], request["queue_type"])
        queue = await channel.declare_queue(queue_name(request["prefix"]), durable=True,
                                            arguments=topology.durable_arguments())
        await queue.bind(request["prefix"], routing_key=PATTERN)
        sink, latency = SINK, request["latency"]
        assert sink is not None

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            sink.record(orjson.loads(message.body)["data"]["sent_ns"] if latency else None)
            await message.ack()

        await queue.consume(on_message)

    async def _bus(self, request: dict[str, Any]) -> None:
        transport = AmqpTransport(AMQP_URL, prefix=request["prefix"], queue_type=request["queue_type"])
        await transport.start()
        self._close.append(transport.aclose)
        tmp = tempfile.TemporaryDirectory(prefix="bench-amqp-")
        self._close.append(_async(tmp.cleanup))
        settings = load_settings(state_dir=Path(tmp.name))
        service = _bench_service(request["durable"], request["prefetch"])
        host = HandlerHost(Bus(transport, cluster="bench", node_id="sink"), [service], max_bytes=1 << 20,
                           settings=settings)
        await host.apply_role(Role.SOLO)
        self._close.insert(0, host.stop_all)

    async def _collect(self, timeout: float) -> dict[str, Any]:
        sink = SINK
        assert sink is not None
        try:
            async with asyncio.timeout(timeout):
                await sink.done.wait()
        except TimeoutError:
            pass
        cpu = time.process_time() - self._cpu
        for close in self._close:
            await close()
        self._close.clear()
        return {"count": sink.count, "first_ns": sink.first_ns, "last_ns": sink.last_ns, "cpu_s": cpu,
                "latencies_us": sink.latencies_us}


def _async(cleanup: Any) -> Any:
    async def run() -> None:
        cleanup()

    return run


def consumer_main(connection: Any) -> None:
    from common import serve

    serve(connection, Consumer().handle)


# -- topology and clean-up ----------------------------------------------------------------------------------


async def declare(prefix: str, queue_type: str) -> None:
    """Create what both variants use once, so the first round of either finds the queue bound."""
    async with AmqpTransport(AMQP_URL, prefix=prefix, queue_type=queue_type) as transport:
        spec = QueueSpec(patterns=(PATTERN,), kind=QueueKind.DURABLE, name=f"{SERVICE}.{HANDLER}")
        subscription = await transport.subscribe(spec, _never)
        await subscription.cancel()


async def _never(delivery: Any) -> Any:
    raise RuntimeError("nothing should arrive while declaring")


async def purge(prefix: str) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name(prefix), passive=True)
        await queue.purge()


async def cleanup(prefix: str) -> None:
    """Delete everything the bench declared under its prefix."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        for queue in (queue_name(prefix), f"{prefix}.dead-letters"):
            await channel.queue_delete(queue)
        for exchange in (prefix, f"{prefix}.dlx"):
            await channel.exchange_delete(exchange)


# -- publishers ---------------------------------------------------------------------------------------------


def sample_envelope(durable: bool) -> tuple[bytes, dict[str, Any]]:
    """The bytes and headers our bus would send for one event: what the raw baseline publishes."""
    model = Work if durable else Tick
    bus = Bus(_NoTransport(), cluster="bench", node_id="publisher")  # type: ignore[arg-type]
    envelope = bus.envelope(model(camera="cam0", n=1, sent_ns=time.monotonic_ns()))
    return encode(envelope), {"ce-type": envelope.type, "ce-id": envelope.id}


class _NoTransport:
    pass


class RawPublisher:
    """aio-pika on its own connection: one channel, confirms only if ``durable``."""

    def __init__(self, prefix: str, durable: bool) -> None:
        self.prefix, self.durable = prefix, durable
        self.body, self.headers = sample_envelope(durable)
        self._template = orjson.loads(self.body)
        self._mode = aio_pika.DeliveryMode.PERSISTENT if durable else aio_pika.DeliveryMode.NOT_PERSISTENT

    async def __aenter__(self) -> RawPublisher:
        self._connection = await aio_pika.connect(AMQP_URL)
        channel = await self._connection.channel(publisher_confirms=self.durable)
        self._exchange = await channel.get_exchange(self.prefix, ensure=False)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self._connection.close()

    def message(self, stamp: bool) -> aio_pika.Message:
        body = self.body
        if stamp:
            self._template["data"]["sent_ns"] = time.monotonic_ns()
            body = orjson.dumps(self._template)
        return aio_pika.Message(body, headers=self.headers, content_type=CONTENT_TYPE, delivery_mode=self._mode,
                                app_id=APP_ID)

    async def publish(self, stamp: bool = False) -> None:
        await self._exchange.publish(self.message(stamp), ROUTING_KEY)


class BusPublisher:
    """Our path: ``Bus.publish`` (envelope build + encode) -> ``AmqpTransport`` (optionally batching)."""

    def __init__(self, prefix: str, durable: bool, queue_type: str, **transport: Any) -> None:
        self.model = Work if durable else Tick
        self._transport = AmqpTransport(AMQP_URL, prefix=prefix, queue_type=queue_type, **transport)
        self._counter = itertools.count()

    async def __aenter__(self) -> BusPublisher:
        await self._transport.start()
        self.bus = Bus(self._transport, cluster="bench", node_id="publisher")
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self._transport.aclose()

    async def publish(self, stamp: bool = False) -> None:
        await self.bus.publish(self.model(camera="cam0", n=next(self._counter), sent_ns=time.monotonic_ns()),
                               ROUTING_KEY)


async def run_window(publish: Any, count: int, window: int) -> None:
    """``count`` publishes with up to ``window`` in flight (``window`` tasks sharing one counter)."""
    left = [count]

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            await publish()

    async with asyncio.TaskGroup() as group:
        for _ in range(min(window, count)):
            group.create_task(worker())


async def run_paced(publish: Any, rate: float, seconds: float, burst_every: float = 0.001) -> int:
    """Publish at ``rate`` per second for ``seconds``: every ``burst_every`` s, what is due by then."""
    sent, started = 0, time.monotonic()
    total = int(rate * seconds)
    while sent < total:
        due = min(total, int((time.monotonic() - started) * rate) + 1)
        while sent < due:
            await publish(True)
            sent += 1
        await asyncio.sleep(burst_every)
    return sent


def summarize(answer: dict[str, Any], start_ns: int, pub_cpu_s: float) -> dict[str, Any]:
    """Figures of one round: end-to-end rate (first publish to last handled), CPU per event, latencies."""
    count = max(answer["count"], 1)
    seconds = (answer["last_ns"] - start_ns) / 1e9
    figures: dict[str, Any] = {
        "rate": answer["count"] / seconds if seconds > 0 else 0.0,
        "count": answer["count"],
        "consumer_cpu_us": 1e6 * answer["cpu_s"] / count,
        "publisher_cpu_us": 1e6 * pub_cpu_s / count,
    }
    latencies = answer["latencies_us"]
    if latencies:
        ordered = sorted(latencies)
        figures["p50_ms"] = ordered[len(ordered) // 2] / 1000
        figures["p99_ms"] = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] / 1000
        figures["quantiles_ms"] = [q / 1000 for q in quantiles(ordered)]
    return figures


@dataclass
class Plan:
    """One bench's fixed parameters: where, what and how the consumer is set up."""

    prefix: str
    durable: bool = False
    queue_type: str = "classic"
    prefetch: int = 256
    latency: bool = False
    timeout: float = 60.0


async def one_round(child: Any, plan: Plan, variant: str, publisher: Any, drive: Any, expect: int) -> dict[str, Any]:
    """Purge, set the consumer up, publish with ``drive(publisher)``, collect the consumer's figures."""
    await purge(plan.prefix)
    child.send({"op": "setup", "variant": variant, "prefix": plan.prefix, "durable": plan.durable,
                "queue_type": plan.queue_type, "prefetch": plan.prefetch, "latency": plan.latency,
                "expect": expect})
    await child.recv()
    async with publisher:
        cpu, start = time.process_time(), time.monotonic_ns()
        await drive(publisher)
        pub_cpu = time.process_time() - cpu
        child.send({"op": "collect", "timeout": plan.timeout})
        answer = await child.recv(plan.timeout + 30)
    if answer["count"] < expect:
        print(f"  warning: {variant} consumer saw {answer['count']} of {expect} events", flush=True)
    return summarize(answer, start, pub_cpu)


@contextlib.asynccontextmanager
async def consumer_process(plan: Plan) -> AsyncIterator[Child]:
    """The consumer in its own process, with the bench's queue declared; both gone when the block ends."""
    child = Child(consumer_main)
    await declare(plan.prefix, plan.queue_type)
    try:
        yield child
    finally:
        await child.close()
        await cleanup(plan.prefix)


async def raw_against_bus(plan: Plan, drive: Callable[[Any], Awaitable[None]], expect: int, rounds: int,
                          show: str) -> dict[str, list[dict[str, Any]]]:
    """Raw aio-pika and ``Bus.publish`` driven alike on the same exchange, queue and consumer process,
    interleaved round by round (``raw``, ``bus``)."""
    async with consumer_process(plan) as child:
        return await interleave({
            "raw": lambda: one_round(child, plan, "raw", RawPublisher(plan.prefix, plan.durable), drive, expect),
            "bus": lambda: one_round(child, plan, "bus", BusPublisher(plan.prefix, plan.durable, plan.queue_type),
                                     drive, expect),
        }, rounds, show=show)
