"""The embedded broker and its Unix socket beyond the shared contract: limits, permissions, bad clients."""

from __future__ import annotations

import asyncio
import logging
import stat
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support import Collector, wait_until
from thatdam_bus.errors import (
    ConfigError,
    PublishRefused,
    TransportClosed,
    TransportError,
    TransportUnavailable,
)
from thatdam_bus.transports.base import REASON_HEADER, Delivery, Fate, Outcome, QueueKind, QueueSpec, Source
from thatdam_bus.transports.embedded import YIELD_DEPTH, EmbeddedTransport, should_yield
from thatdam_bus.transports.socket_client import SocketTransport
from thatdam_bus.transports.workers import MAX_WORKERS

OUR_TASKS = ("embedded:", "bus-socket-pump", "socket-subscription")


def durable(name: str, *patterns: str, prefetch: int = 64) -> QueueSpec:
    return QueueSpec(patterns=patterns, kind=QueueKind.DURABLE, name=name, prefetch=prefetch)


@pytest.fixture
def sock(state_dir: Path) -> Path:
    return state_dir / "bus.sock"


@pytest.fixture
async def host(prefix: str, sock: Path) -> AsyncIterator[EmbeddedTransport]:
    async with EmbeddedTransport(prefix=prefix, socket_path=sock) as transport:
        yield transport


async def client(prefix: str, sock: Path) -> SocketTransport:
    transport = SocketTransport(sock, prefix=prefix, connect_timeout=2.0)
    await transport.start()
    return transport


async def read_to_eof(reader: asyncio.StreamReader) -> None:
    async with asyncio.timeout(5):
        while await reader.read(65536):
            pass


# -- the socket file ----------------------------------------------------------------------------------------

async def test_socket_is_owner_only(host: EmbeddedTransport, sock: Path) -> None:
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600


async def test_stale_socket_is_replaced_and_a_live_one_refused(prefix: str, sock: Path) -> None:
    first = EmbeddedTransport(prefix=prefix, socket_path=sock)
    await first.start()
    second = EmbeddedTransport(prefix=prefix, socket_path=sock)
    with pytest.raises(TransportError, match="already serving"):
        await second.start()
    first._server._server.close()  # type: ignore[union-attr]  # a crashed node leaves its file behind
    await first._server._server.wait_closed()  # type: ignore[union-attr]
    assert sock.exists()
    async with EmbeddedTransport(prefix=prefix, socket_path=sock) as third:
        bus = await client(prefix, sock)
        got = Collector()
        await bus.subscribe(QueueSpec(patterns=("#",)), got)
        await third.publish("a.b", b"hi")
        await got.wait_body(b"hi")
        await bus.aclose()
    await first.aclose()
    await second.aclose()
    assert not sock.exists()


async def test_socket_start_refuses_a_regular_file_and_a_missing_directory(prefix: str, sock: Path) -> None:
    sock.write_text("not a socket")
    with pytest.raises(ConfigError, match="not a socket"):
        await EmbeddedTransport(prefix=prefix, socket_path=sock).start()
    with pytest.raises(ConfigError, match="does not exist"):
        await EmbeddedTransport(prefix=prefix, socket_path=sock.parent / "nope" / "bus.sock").start()


async def test_client_fails_fast_when_nothing_listens(prefix: str, sock: Path) -> None:
    with pytest.raises(TransportUnavailable):
        await SocketTransport(sock, prefix=prefix, connect_timeout=1.0).start()


async def test_client_with_another_prefix_is_refused(host: EmbeddedTransport, sock: Path) -> None:
    with pytest.raises(ConfigError, match="prefix"):
        await SocketTransport(sock, prefix="someone-else").start()


# -- hostile clients ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "payload",
    [
        struct.pack(">II", 16, 5 * 1024 * 1024) + b"x" * 1024,  # oversized: refused from the prefix alone
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # garbage: an absurd length
        struct.pack(">II", 5, 0) + b"nojsn",  # a header that is not JSON
        struct.pack(">II", 2, 0) + b"[]",  # JSON, but not an object with an op
        struct.pack(">II", 13, 0) + b'{"op":"boom"}',  # unknown operation
        struct.pack(">II", 16, 0) + b'{"op":"pub","k":1}',  # wrong field type
    ],
    ids=["oversized", "garbage", "not-json", "not-object", "unknown-op", "bad-field"],
)
async def test_bad_frames_cost_only_that_connection(
    host: EmbeddedTransport, prefix: str, sock: Path, payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    bystander = await client(prefix, sock)
    got = Collector()
    await bystander.subscribe(QueueSpec(patterns=("x.#",)), got)
    with caplog.at_level(logging.WARNING, logger="thatdam_bus.transports.socket_protocol"):
        reader, writer = await asyncio.open_unix_connection(str(sock))
        writer.write(payload)
        await writer.drain()
        await read_to_eof(reader)  # the server hung up on the bad client
        writer.close()
        await writer.wait_closed()
    assert any("closing the connection" in r.message for r in caplog.records)
    late = await client(prefix, sock)
    await late.publish("x.after", b"still-serving", durable=True)
    await got.wait_body(b"still-serving")
    await late.aclose()
    await bystander.aclose()


# -- work is never lost -------------------------------------------------------------------------------------

async def test_unacked_work_of_a_vanished_client_goes_to_another_consumer(
    host: EmbeddedTransport, prefix: str, sock: Path
) -> None:
    doomed, survivor = await client(prefix, sock), await client(prefix, sock)
    held: list[Delivery] = []
    never = asyncio.Event()

    async def hold(delivery: Delivery) -> Outcome:
        held.append(delivery)
        await never.wait()
        return Outcome(Fate.ACK)

    await doomed.subscribe(durable("work", "frame.#", prefetch=8), hold)
    for i in range(3):
        await host.publish("frame.n1.cam.ready", str(i).encode(), durable=True)
    await wait_until(lambda: len(held) == 3, what="the doomed client holds all three")
    got = Collector()
    await survivor.subscribe(durable("work", "frame.#"), got)
    assert doomed._connection is not None and doomed._connection.transport is not None
    doomed._connection.transport.abort()  # a crash: no release, no goodbye
    await got.wait_count(3)
    assert sorted(got.bodies) == [b"0", b"1", b"2"]
    assert all(d.attempt == 2 for d in got.got)
    await doomed.aclose()
    await survivor.aclose()


@pytest.mark.parametrize("where", ["embedded", "socket"])
async def test_cancel_returns_interrupted_work_as_redelivered_and_backlog_as_is(
    host: EmbeddedTransport, prefix: str, sock: Path, where: str
) -> None:
    consumer = host if where == "embedded" else await client(prefix, sock)
    held: list[Delivery] = []
    never = asyncio.Event()

    async def hold(delivery: Delivery) -> Outcome:
        held.append(delivery)
        await never.wait()
        return Outcome(Fate.ACK)

    total = MAX_WORKERS + 6  # prefetch covers all; only MAX_WORKERS callbacks run, the rest wait unseen
    subscription = await consumer.subscribe(durable("work", "intent.#", prefetch=total), hold)
    for i in range(total):
        await host.publish("intent.capture.start", str(i).encode(), durable=True)
    await wait_until(lambda: len(held) == MAX_WORKERS, what="every worker holds a message")
    await subscription.cancel()
    later = Collector()
    await host.subscribe(durable("work", "intent.#"), later)
    await later.wait_count(total)
    attempts = {int(d.body): d.attempt for d in later.got}
    assert sorted(attempts) == list(range(total))
    assert {attempts[int(d.body)] for d in held} == {2}
    assert [attempts[i] for i in range(MAX_WORKERS, total)] == [1] * 6
    if consumer is not host:
        await consumer.aclose()


async def test_full_durable_queue_refuses_a_durable_publish(prefix: str, sock: Path) -> None:
    async with EmbeddedTransport(prefix=prefix, queue_limit=3, socket_path=sock) as bus:
        idle = await bus.subscribe(durable("work", "intent.#"), Collector())
        await idle.cancel()  # the queue stays and keeps its work while nobody consumes
        for i in range(3):
            await bus.publish("intent.capture.start", str(i).encode(), durable=True)
        with pytest.raises(PublishRefused, match="full"):
            await bus.publish("intent.capture.start", b"3", durable=True)
        remote = await client(prefix, sock)
        with pytest.raises(PublishRefused, match="full"):
            await remote.publish("intent.capture.start", b"4", durable=True)
        await remote.publish("intent.capture.start", b"5")  # fire-and-forget: dropped, never raised
        with pytest.raises(PublishRefused):  # same connection, so "5" has been routed before this answer
            await remote.publish("intent.capture.start", b"6", durable=True)
        got = Collector()
        await bus.subscribe(durable("work", "intent.#"), got)
        await got.wait_count(3)
        await bus.publish("intent.capture.start", b"room-again", durable=True)
        await got.wait_body(b"room-again")
        assert got.bodies == [b"0", b"1", b"2", b"room-again"]
        await remote.aclose()


async def test_full_ephemeral_view_drops_its_oldest(prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    gate = asyncio.Event()
    seen: list[bytes] = []

    async def slow(delivery: Delivery) -> Outcome:
        seen.append(delivery.body)
        await gate.wait()
        return Outcome(Fate.ACK)

    async with EmbeddedTransport(prefix=prefix, queue_limit=5) as bus:
        await bus.subscribe(QueueSpec(patterns=("node.*.heartbeat",), prefetch=1), slow)
        await bus.publish("node.n1.heartbeat", b"0")
        await wait_until(lambda: seen == [b"0"], what="the first heartbeat is being handled")
        with caplog.at_level(logging.WARNING):
            for i in range(1, 21):
                await bus.publish("node.n1.heartbeat", str(i).encode())
        gate.set()
        await wait_until(lambda: len(seen) == 6, what="the five newest heartbeats")
        assert seen == [b"0", b"16", b"17", b"18", b"19", b"20"]
        assert sum("is full" in r.message for r in caplog.records) == 1


async def test_a_fast_publisher_lets_in_process_consumers_keep_pace(prefix: str) -> None:
    """A publisher that never awaits anything else yields once a queue holds a burst, not at half its limit:
    each consumer then finds at most ``YIELD_DEPTH`` messages waiting, however many are published."""
    async with EmbeddedTransport(prefix=prefix, queue_limit=10_000) as bus:
        deepest: list[int] = []
        queues: list[str] = []

        async def sink(delivery: Delivery) -> Outcome:
            deepest.append(len(bus.broker.queues[delivery.queue]) + 1)
            return Outcome(Fate.ACK)

        for _ in range(3):
            queues.append((await bus.subscribe(QueueSpec(patterns=("tick.#",), prefetch=1), sink)).queue)
        for n in range(2_000):
            await bus.publish("tick.cam0", str(n).encode())
        await wait_until(lambda: len(deepest) == 3 * 2_000, what="every copy handled")
        assert max(deepest) <= YIELD_DEPTH
        assert sum(bus.broker.queues[q].dropped for q in queues) == 0


def test_a_queue_nobody_consumes_costs_one_turn_per_burst_until_its_high_water_mark() -> None:
    high_water = 5_000
    turns = [depth for depth in range(1, 6_001) if should_yield(depth, high_water)]
    assert turns[:3] == [YIELD_DEPTH, 2 * YIELD_DEPTH, 3 * YIELD_DEPTH]
    assert len([t for t in turns if t <= high_water]) == high_water // YIELD_DEPTH
    assert [t for t in turns if t > high_water] == list(range(high_water + 1, 6_001))  # every publish past it


# -- dead letters, lifecycle --------------------------------------------------------------------------------

async def test_dead_letter_records_wait_for_a_later_reader(prefix: str, sock: Path) -> None:
    async with EmbeddedTransport(prefix=prefix, socket_path=sock) as bus:
        refuse = Collector(lambda _d: Outcome(Fate.DEAD_LETTER, "no"))
        await bus.subscribe(durable("refuser", "intent.#"), refuse)
        await bus.publish("intent.capture.start", b"refused", durable=True)
        remote = await client(prefix, sock)
        records = Collector()
        spec = QueueSpec(("#",), kind=QueueKind.DURABLE, name="dead-letters", source=Source.DEAD_LETTERS)
        await remote.subscribe(spec, records)
        await records.wait_body(b"refused")
        assert records.got[0].headers[REASON_HEADER] == "no"
        assert records.got[0].queue == f"{prefix}.dead-letters"
        await remote.aclose()


async def test_a_callback_may_cancel_its_own_subscription(prefix: str) -> None:
    async with EmbeddedTransport(prefix=prefix) as bus:
        seen: list[bytes] = []
        holder: dict[str, object] = {}

        async def once(delivery: Delivery) -> Outcome:
            seen.append(delivery.body)
            await holder["sub"].cancel()  # type: ignore[attr-defined]
            return Outcome(Fate.ACK)

        holder["sub"] = await bus.subscribe(QueueSpec(patterns=("a",), prefetch=1), once)
        other = Collector()
        await bus.subscribe(QueueSpec(patterns=("a",)), other)
        for body in (b"1", b"2", b"3"):
            await bus.publish("a", body)
        await other.wait_count(3)
        assert seen == [b"1"]


async def test_aclose_leaves_no_tasks_and_refuses_use(
    host: EmbeddedTransport, prefix: str, sock: Path
) -> None:
    remote = await client(prefix, sock)
    await remote.subscribe(durable("work", "#", prefetch=4), Collector())
    await host.subscribe(QueueSpec(patterns=("#",)), Collector())
    assert "subscriptions=1" in repr(host) and str(sock) in repr(host)
    await remote.aclose()
    await host.aclose()
    await host.aclose()  # idempotent
    ours = [t for t in asyncio.all_tasks() if t.get_name().startswith(OUR_TASKS) and not t.done()]
    assert ours == []
    with pytest.raises(TransportClosed):
        await host.publish("a", b"x")
    with pytest.raises(TransportClosed):
        await remote.publish("a", b"x")
    assert not sock.exists()


async def test_headers_the_socket_cannot_carry_are_dead_lettered(
    host: EmbeddedTransport, prefix: str, sock: Path
) -> None:
    remote = await client(prefix, sock)
    got, dead = Collector(), Collector()
    await remote.subscribe(QueueSpec(patterns=("a.#",)), got)
    await remote.subscribe(QueueSpec(patterns=("#",), source=Source.DEAD_LETTERS), dead)
    await host.publish("a.odd", b"odd", headers={"x-object": object()})
    await host.publish("a.fine", b"fine", headers={"x-n": 1})
    await got.wait_body(b"fine")
    await dead.wait_body(b"odd")
    assert "cannot cross the bus socket" in dead.got[0].headers[REASON_HEADER]
    assert dead.got[0].headers["x-object"].startswith("<object object")
    assert got.got[0].headers == {"x-n": 1}
    await remote.aclose()
