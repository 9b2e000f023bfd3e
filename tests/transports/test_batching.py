"""Batching on RabbitMQ: several events per AMQP message, unpacked before any callback, each with its own fate.

The whole contract suite also runs with every publish batched (the ``amqp-batched`` kind in ``conftest``);
these tests pin what batching itself promises: batches are really formed, events arrive complete and in
publish order, and one bad event in a batch is dead-lettered (or retried) alone, its neighbours untouched.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aio_pika
import pytest

from tests.conftest import delete_amqp_prefix
from tests.support import Collector, wait_until
from thatdam_bus.transports.amqp import AmqpTransport
from thatdam_bus.transports.base import (
    ORIGINAL_KEY_HEADER,
    REASON_HEADER,
    Delivery,
    Fate,
    Outcome,
    QueueKind,
    QueueSpec,
    Source,
)
from thatdam_bus.transports.batching import (
    BATCH_HEADER,
    Batcher,
    BatchFormatError,
    BatchPolicy,
    encode_record,
    iter_records,
    unpack,
)

KEY = "frame.n1.cam0.ready"


def test_records_round_trip_and_malformed_bodies_are_refused() -> None:
    body = encode_record(b"first", {"ce-id": "1"}) + encode_record(b"", None) + encode_record(b"third", {})
    assert list(iter_records(body)) == [({"ce-id": "1"}, b"first"), ({}, b""), ({}, b"third")]
    events = unpack(Delivery(KEY, body, {BATCH_HEADER: 3}, 2, "q"))
    assert [(d.routing_key, d.body, d.attempt, d.queue) for d in events] == [
        (KEY, b"first", 2, "q"), (KEY, b"", 2, "q"), (KEY, b"third", 2, "q")]
    not_json = b"\x00\x00\x00\x01\x00\x00\x00\x00["
    for bad in (body[:-1], body[:5], encode_record(b"x", None)[:4] + b"\x00\x00\x00\x05x", not_json):
        with pytest.raises(BatchFormatError):
            list(iter_records(bad))


@pytest.fixture
async def pair(rabbitmq: str, prefix: str) -> AsyncIterator[tuple[AmqpTransport, AmqpTransport, list[str]]]:
    """A batching publisher and a plain consumer on one prefix; everything declared is deleted after."""
    queues: list[str] = []
    policy = BatchPolicy(patterns=("frame.#",), max_events=10, linger=0.05)
    publisher = AmqpTransport(rabbitmq, prefix=prefix, batch=policy)
    consumer = AmqpTransport(rabbitmq, prefix=prefix, max_attempts=3)
    await publisher.start()
    await consumer.start()
    try:
        yield publisher, consumer, queues
    finally:
        await publisher.aclose()
        await consumer.aclose()
        await delete_amqp_prefix(rabbitmq, prefix, queues)


def work_queue(queues: list[str], prefix: str, name: str, prefetch: int = 64) -> QueueSpec:
    queues.append(f"{prefix}.{name}")
    return QueueSpec(patterns=("frame.#",), kind=QueueKind.DURABLE, name=name, prefetch=prefetch)


async def test_batched_events_arrive_complete_and_in_order(pair, prefix: str) -> None:  # type: ignore[no-untyped-def]
    publisher, consumer, queues = pair
    got = Collector()
    await consumer.subscribe(work_queue(queues, prefix, "ordered"), got)
    sent = [f"{i:05d}".encode() for i in range(1000)]
    for body in sent:
        await publisher.publish(KEY, body, headers={"ce-id": body.decode()})
    await got.wait_count(len(sent))
    assert got.bodies == sent
    assert [d.headers["ce-id"] for d in got.got] == [b.decode() for b in sent]
    assert all(BATCH_HEADER not in d.headers for d in got.got)
    assert publisher.batcher is not None
    assert publisher.batcher.events_sent == len(sent)
    assert publisher.batcher.batches_sent == len(sent) // 10  # every batch closed full: 10 events a message


async def test_durable_batched_publishes_return_once_confirmed(pair, prefix: str) -> None:  # type: ignore[no-untyped-def]
    publisher, consumer, queues = pair
    got = Collector()
    await consumer.subscribe(work_queue(queues, prefix, "durable"), got)
    sent = [f"{i:04d}".encode() for i in range(205)]
    await asyncio.gather(*(publisher.publish(KEY, body, durable=True) for body in sent))
    assert publisher.batcher is not None and publisher.batcher.events_sent == len(sent)  # all confirmed
    await got.wait_count(len(sent))
    assert got.bodies == sent


async def test_one_bad_event_is_dead_lettered_alone_and_its_neighbours_arrive(  # type: ignore[no-untyped-def]
    pair, prefix: str
) -> None:
    publisher, consumer, queues = pair
    dead = Collector()
    await consumer.subscribe(QueueSpec(patterns=("#",), source=Source.DEAD_LETTERS), dead)
    handled: list[tuple[bytes, int]] = []

    async def callback(delivery: Delivery) -> Outcome:
        if delivery.body == b"4":
            return Outcome(Fate.DEAD_LETTER, "event 4 is bad")
        if delivery.body == b"7" and delivery.attempt == 1:
            raise RuntimeError("event 7 fails once")
        handled.append((delivery.body, delivery.attempt))
        return Outcome(Fate.ACK)

    await consumer.subscribe(work_queue(queues, prefix, "picky"), callback)
    for i in range(10):  # exactly one batch: it closes when the tenth event fills it
        await publisher.publish(KEY, str(i).encode(), headers={"n": i})
    await dead.wait_count(1)
    await wait_until(lambda: len(handled) >= 9, what="the nine good events")
    assert publisher.batcher is not None and publisher.batcher.batches_sent == 1
    bodies = [body for body, _ in handled]
    # The batch's events are handled in order; the retried 7 comes back as a message of its own, which may
    # be handled while the batch still waits for the confirm of that republish (before 8 or 9), not before 6.
    assert [body for body in bodies if body != b"7"] == [b"0", b"1", b"2", b"3", b"5", b"6", b"8", b"9"]
    assert bodies.index(b"7") > bodies.index(b"6")
    assert dict(handled)[b"7"] == 2 and all(attempt == 1 for body, attempt in handled if body != b"7")
    record = dead.got[0]
    assert record.body == b"4"
    assert record.headers[REASON_HEADER] == "event 4 is bad"
    assert record.headers[ORIGINAL_KEY_HEADER] == KEY
    assert record.headers["n"] == 4 and BATCH_HEADER not in record.headers
    await asyncio.sleep(0.2)  # nothing else arrives: no neighbour was redelivered or dead-lettered
    assert len(handled) == 9 and len(dead.got) == 1


async def test_a_malformed_batch_goes_to_the_subscriber_whole(pair, rabbitmq: str, prefix: str) -> None:  # type: ignore[no-untyped-def]
    """Not parked by the transport behind the handler's back: the handler sees one undecodable message, so
    its refusal is counted and logged with every other bad input, and its reason rides on the dead letter."""
    _, consumer, queues = pair
    dead, got = Collector(), Collector(lambda _d: Outcome(Fate.DEAD_LETTER, "not an envelope"))
    await consumer.subscribe(QueueSpec(patterns=("#",), source=Source.DEAD_LETTERS), dead)
    await consumer.subscribe(work_queue(queues, prefix, "malformed"), got)
    connection = await aio_pika.connect(rabbitmq)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(prefix, ensure=False)
        await exchange.publish(aio_pika.Message(b"\x00\x00\x00\x09oops", headers={BATCH_HEADER: 1}), KEY)
    await dead.wait_count(1)
    assert dead.got[0].body == b"\x00\x00\x00\x09oops"
    assert dead.got[0].headers[REASON_HEADER] == "not an envelope"
    assert got.bodies == [b"\x00\x00\x00\x09oops"] and BATCH_HEADER not in got.got[0].headers


async def test_linger_zero_closes_a_batch_when_the_publisher_yields() -> None:
    """No broker: with ``linger=0`` a batch is what was published before the loop got control back."""
    sent: list[tuple[str, int, bool]] = []

    async def send(routing_key: str, body: bytes, headers: dict[str, object], durable: bool) -> None:
        sent.append((routing_key, len(list(iter_records(body))), durable))

    batcher = Batcher(BatchPolicy(patterns=("frame.#",), max_events=4, linger=0), send)
    for i in range(6):  # one loop step: a full batch of 4 leaves at once, the other 2 when we yield
        await batcher.publish(KEY, str(i).encode(), None, durable=False)
    await batcher.publish("frame.n1.cam1.ready", b"other key", None, durable=False)
    await asyncio.sleep(0)
    await batcher.publish(KEY, b"durable", None, durable=True)  # waits for its own batch to be sent
    await batcher.flush()
    assert sent == [(KEY, 4, False), (KEY, 2, False), ("frame.n1.cam1.ready", 1, False), (KEY, 1, True)]
    assert not batcher.wants("node.n1.heartbeat") and batcher.wants(KEY)
