"""One contract, every transport: the same tests run against embedded, its socket client, and RabbitMQ."""

from __future__ import annotations

import asyncio

import pytest

from tests.support import Collector, wait_until
from tests.transports.conftest import TransportKit
from thatdam_bus.errors import PublishRefused
from thatdam_bus.transports.base import (
    ATTEMPTS_HEADER,
    ORIGINAL_KEY_HEADER,
    REASON_HEADER,
    Fate,
    Outcome,
    QueueSpec,
    Source,
)


def tap(*patterns: str) -> QueueSpec:
    return QueueSpec(patterns=patterns)


def dead_letter_tap() -> QueueSpec:
    return QueueSpec(patterns=("#",), source=Source.DEAD_LETTERS)


async def test_wildcard_routing(kit: TransportKit) -> None:
    bus = await kit.new()
    star, hash_tail, hash_head, exact = Collector(), Collector(), Collector(), Collector()
    await bus.subscribe(tap("a.*.c"), star)
    await bus.subscribe(tap("a.#"), hash_tail)
    await bus.subscribe(tap("#.z"), hash_head)
    await bus.subscribe(tap("end"), exact)
    for key in ["a.b.c", "a.c", "a.b.b.c", "a", "a.x.y.z", "z", "b.a", "q.z"]:
        await bus.publish(key, key.encode())
    await bus.publish("end", b"end")
    await exact.wait_body(b"end")
    await wait_until(lambda: len(hash_head.got) >= 3 and len(hash_tail.got) >= 5 and len(star.got) >= 1)
    # Same-queue FIFO: each collector has seen everything published before the sentinel that it matches.
    await bus.publish("a.z.c", b"sentinel-a")
    await star.wait_body(b"sentinel-a")
    await hash_tail.wait_body(b"sentinel-a")
    assert star.keys == ["a.b.c", "a.z.c"]
    assert hash_tail.keys == ["a.b.c", "a.c", "a.b.b.c", "a", "a.x.y.z", "a.z.c"]
    assert hash_head.keys == ["a.x.y.z", "z", "q.z"]
    assert exact.keys == ["end"]


async def test_fan_out_to_two_ephemeral_subscribers(kit: TransportKit) -> None:
    bus = await kit.new()
    first, second = Collector(), Collector()
    await bus.subscribe(tap("node.*.heartbeat"), first)
    await bus.subscribe(tap("node.*.heartbeat"), second)
    for i in range(20):
        await bus.publish("node.n1.heartbeat", str(i).encode())
    await first.wait_count(20)
    await second.wait_count(20)
    assert first.bodies == second.bodies == [str(i).encode() for i in range(20)]


async def test_competing_consumers_share_one_durable_queue(kit: TransportKit) -> None:
    bus_a, bus_b, publisher = await kit.new(), await kit.new(), await kit.new()
    gate = asyncio.Event()

    async def slow_ack(delivery: object) -> Outcome:
        await gate.wait()
        return Outcome(Fate.ACK)

    a, b = Collector(), Collector()

    async def via_a(d):  # type: ignore[no-untyped-def]
        await a(d)
        return await slow_ack(d)

    async def via_b(d):  # type: ignore[no-untyped-def]
        await b(d)
        return await slow_ack(d)

    spec = kit.durable("work", "frame.#", prefetch=1)
    await bus_a.subscribe(spec, via_a)
    await bus_b.subscribe(spec, via_b)
    for i in range(40):
        await publisher.publish("frame.n1.cam.ready", str(i).encode(), durable=True)
    await wait_until(lambda: len(a.got) >= 1 and len(b.got) >= 1, what="both consumers hold a message")
    gate.set()
    await wait_until(lambda: len(a.got) + len(b.got) >= 40, what="all 40 consumed")
    assert sorted(a.bodies + b.bodies, key=int) == [str(i).encode() for i in range(40)]
    assert not set(a.bodies) & set(b.bodies), "a work item was delivered to both competing consumers"


async def test_per_publisher_order_on_a_durable_queue(kit: TransportKit) -> None:
    bus = await kit.new()
    got = Collector()
    await bus.subscribe(kit.durable("ordered", "intent.#"), got)
    sent = [f"{i:05d}".encode() for i in range(500)]
    for body in sent:
        await bus.publish("intent.capture.start", body, durable=True)
    await got.wait_count(500)
    assert got.bodies == sent


async def test_durable_queue_keeps_work_while_no_consumer(kit: TransportKit) -> None:
    bus = await kit.new()
    spec = kit.durable("keeps", "intent.#")
    first = Collector()
    subscription = await bus.subscribe(spec, first)
    await subscription.cancel()
    await bus.publish("intent.capture.stop", b"while-away", durable=True)
    later = Collector()
    await bus.subscribe(spec, later)
    await later.wait_body(b"while-away")


async def test_dead_letter_carries_reason(kit: TransportKit) -> None:
    bus = await kit.new()
    dead = Collector()
    await bus.subscribe(dead_letter_tap(), dead)
    refuse = Collector(outcome=lambda _d: Outcome(Fate.DEAD_LETTER, "body is not JSON: unexpected byte"))
    await bus.subscribe(kit.durable("refuser", "intent.#"), refuse)
    await bus.publish("intent.capture.start", b"\x00garbage", durable=True, headers={"x-test": "kept"})
    await dead.wait_count(1)
    record = dead.got[0]
    assert record.body == b"\x00garbage"
    assert record.headers[REASON_HEADER] == "body is not JSON: unexpected byte"
    assert record.headers[ORIGINAL_KEY_HEADER] == "intent.capture.start"
    assert record.headers["x-test"] == "kept"


async def test_raising_subscriber_is_redelivered_then_succeeds(kit: TransportKit) -> None:
    bus = await kit.new()
    calls: list[int] = []

    async def flaky(delivery):  # type: ignore[no-untyped-def]
        calls.append(delivery.attempt)
        if len(calls) == 1:
            raise RuntimeError("transient")
        return Outcome(Fate.ACK)

    await bus.subscribe(kit.durable("flaky", "intent.#"), flaky)
    await bus.publish("intent.capture.start", b"once", durable=True)
    await wait_until(lambda: len(calls) >= 2, what="redelivery after the handler raised")
    assert calls[0] == 1 and calls[1] >= 2


async def test_poison_message_is_dead_lettered_after_max_attempts(kit: TransportKit) -> None:
    bus = await kit.new(max_attempts=3)
    dead, poison, good = Collector(), Collector(), Collector()
    await bus.subscribe(dead_letter_tap(), dead)

    async def always_fails(delivery):  # type: ignore[no-untyped-def]
        if delivery.body == b"poison":
            await poison(delivery)
            raise ValueError("cannot handle this")
        return await good(delivery)

    await bus.subscribe(kit.durable("poisoned", "intent.#", prefetch=1), always_fails)
    await bus.publish("intent.capture.start", b"poison", durable=True)
    await bus.publish("intent.capture.start", b"after", durable=True)
    await dead.wait_count(1)
    await good.wait_body(b"after")
    assert len(poison.got) == 3
    assert "cannot handle this" in dead.got[0].headers[REASON_HEADER]
    assert int(dead.got[0].headers[ATTEMPTS_HEADER]) == 3


async def test_cancelled_subscription_gets_nothing_more(kit: TransportKit) -> None:
    bus = await kit.new()
    gone, stays = Collector(), Collector()
    subscription = await bus.subscribe(tap("x.#"), gone)
    await bus.subscribe(tap("x.#"), stays)
    await bus.publish("x.1", b"1")
    await gone.wait_count(1)
    await subscription.cancel()
    await bus.publish("x.2", b"2")
    await stays.wait_count(2)
    assert gone.bodies == [b"1"]


async def test_mandatory_publish_to_nowhere_is_refused(kit: TransportKit) -> None:
    bus = await kit.new()
    with pytest.raises(PublishRefused):
        await bus.publish("nobody.listens.here", b"x", durable=True, mandatory=True)
    got = Collector()
    await bus.subscribe(tap("somebody.#"), got)
    await bus.publish("somebody.listens", b"y", durable=True, mandatory=True)
    await got.wait_body(b"y")
