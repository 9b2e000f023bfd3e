"""Embedded broker through its local Unix socket, clients in another process: ours vs a bare socket router.

    .venv/bin/python bench/embedded_socket.py [--rounds 6] [--count 30000] [--prefetch 256]

The broker runs in a child process: ours is an ``EmbeddedTransport`` serving ``bus.sock``; the baseline is
``socket_bare.BareServer`` (same framing, routes cached, coalesced writes, orjson, no validation). The clients
run in this process, one publisher connection and one subscriber connection. Ours: ``Bus.publish`` on a
``SocketTransport`` and a ``HandlerHost`` typed handler on another ``SocketTransport`` (durable queue, prefetch
``--prefetch``, batched acks). Baseline: frames written straight to the socket, bodies decoded with orjson,
acks batched per read. Figure: events/s from first publish to last handled. Target: ours >= 0.7x. Also printed:
the client codec floor, the rate of the client process's per-event work alone, as a ratio to the bare clients.
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
from common import PATTERN, ROUTING_KEY, Child, Row, Tick, interleave, medians, serve, throughput_row
from embedded_inprocess import report_codec_floor
from socket_bare import BareServer, Publisher, Subscriber, frame

from thatdam_bus import Role, load_settings
from thatdam_bus.context import HandlerContext
from thatdam_bus.envelope import Envelope
from thatdam_bus.node.services import HandlerHost
from thatdam_bus.publisher import Bus
from thatdam_bus.service import Service
from thatdam_bus.transports.base import QueueKind
from thatdam_bus.transports.embedded import EmbeddedTransport
from thatdam_bus.transports.socket_client import SocketTransport

TARGET = 0.7


# -- the broker child ---------------------------------------------------------------------------------------


class Broker:
    def __init__(self) -> None:
        self._server: Any = None
        self._cpu = 0.0

    async def handle(self, request: dict[str, Any]) -> Any:
        if request["op"] == "start":
            if request["variant"] == "bare":
                self._server = BareServer()
                await self._server.start(request["path"])
            else:
                self._server = EmbeddedTransport(prefix="bench", socket_path=Path(request["path"]))
                await self._server.start()
            self._cpu = time.process_time()
            return "ready"
        cpu = time.process_time() - self._cpu
        await self._server.aclose()
        return {"cpu_s": cpu}


def broker_main(connection: Any) -> None:
    serve(connection, Broker().handle)


# -- the clients (this process) -----------------------------------------------------------------------------


class Done:
    def __init__(self, expect: int) -> None:
        self.left = expect
        self.event = asyncio.Event()

    def hit(self) -> None:
        self.left -= 1
        if self.left <= 0:
            self.event.set()


async def bare_clients(path: str, count: int) -> float:
    loop = asyncio.get_running_loop()
    done = Done(count)
    template = orjson.loads(sample_envelope(False)[0])

    def on_event(event: dict[str, Any]) -> None:
        assert event["data"]["camera"]
        done.hit()

    sub_transport, subscriber = await loop.create_unix_connection(lambda: Subscriber(on_event), path)
    subscriber.send(frame({"op": "sub", "p": PATTERN}))
    await subscriber.subscribed
    pub_transport, publisher = await loop.create_unix_connection(Publisher, path)
    began = time.perf_counter()
    for n in range(count):
        event = {**template, "data": {"camera": "cam0", "n": n, "sent_ns": time.monotonic_ns()}}
        await publisher.publish(ROUTING_KEY, orjson.dumps(event))
    publisher.flush()
    async with asyncio.timeout(60):
        await done.event.wait()
    seconds = time.perf_counter() - began
    pub_transport.close()
    sub_transport.close()
    return seconds


def _service(prefetch: int, done: list[Done]) -> Service:
    service = Service("bench", roles={Role.SOLO})

    @service.on(PATTERN, queue=QueueKind.DURABLE, prefetch=prefetch)
    async def sink(event: Envelope[Tick], ctx: HandlerContext) -> None:
        assert event.data.camera
        done[0].hit()

    return service


async def bus_clients(path: str, count: int, prefetch: int) -> float:
    done = [Done(count)]
    with tempfile.TemporaryDirectory(prefix="bench-socket-") as tmp:
        settings = load_settings(state_dir=Path(tmp))
        async with SocketTransport(Path(path), prefix="bench") as sub, SocketTransport(Path(path),
                                                                                        prefix="bench") as pub:
            host = HandlerHost(Bus(sub, cluster="bench", node_id="sub"), [_service(prefetch, done)],
                               max_bytes=1 << 20, settings=settings)
            await host.apply_role(Role.SOLO)
            bus = Bus(pub, cluster="bench", node_id="pub")
            try:
                began = time.perf_counter()
                for n in range(count):
                    await bus.publish(Tick(camera="cam0", n=n, sent_ns=time.monotonic_ns()), ROUTING_KEY)
                async with asyncio.timeout(60):
                    await done[0].event.wait()
                return time.perf_counter() - began
            finally:
                await host.stop_all()


async def one_round(child: Child, variant: str, count: int, prefetch: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-sock-") as tmp:
        path = str(Path(tmp) / "bus.sock")
        child.send({"op": "start", "variant": variant, "path": path})
        await child.recv()
        cpu = time.process_time()
        try:
            if variant == "bare":
                seconds = await bare_clients(path, count)
            else:
                seconds = await bus_clients(path, count, prefetch)
        finally:
            client_cpu = time.process_time() - cpu
            child.send({"op": "stop"})
            broker = await child.recv()
    return {"rate": count / seconds, "client_cpu_us": 1e6 * client_cpu / count,
            "broker_cpu_us": 1e6 * broker["cpu_s"] / count}


async def main(args: argparse.Namespace) -> Row:
    child = Child(broker_main)
    try:
        runs = await interleave({
            "bare": lambda: one_round(child, "bare", args.count, args.prefetch),
            "bus": lambda: one_round(child, "bus", args.count, args.prefetch),
        }, args.rounds, show="rate,client_cpu_us,broker_cpu_us")
    finally:
        await child.close()
    floor = report_codec_floor(args.count, args.rounds, medians(runs["bare"])["rate"], "the bare clients",
                               "decode/validate, no socket")
    title = "Embedded broker through its Unix socket, clients in another process"
    return throughput_row("embedded_socket", title, runs, "bare", TARGET, args.rounds,
                          {"count": args.count, "prefetch": args.prefetch, "codec_floor_rate": floor})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--count", type=int, default=30_000)
    parser.add_argument("--prefetch", type=int, default=256)
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
