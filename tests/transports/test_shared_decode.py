"""The in-process fast paths keep the slow paths' behaviour: envelopes the Bus builds without re-validation equal
validated ones, one decode is shared only between handlers of an immutable model, and the handler metrics read
by Prometheus stay exact."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

import pytest
from prometheus_client import REGISTRY
from pydantic import Field, ValidationError

from thatdam_bus import Envelope, HandlerContext, Service
from thatdam_bus.dispatch import make_callback
from thatdam_bus.envelope import Payload, encode, shareable, typed_envelope
from thatdam_bus.metrics.instruments import HandlerMetrics
from thatdam_bus.publisher import Bus
from thatdam_bus.transports.base import ACK, Delivery, Fate, QueueSpec
from thatdam_bus.transports.embedded import EmbeddedTransport


class Point(Payload):
    event_type: ClassVar[str] = "thatdam.test.point.v1"
    x: int
    tags: tuple[str, ...] = ()


class Bag(Payload):
    event_type: ClassVar[str] = "thatdam.test.bag.v1"
    items: list[int] = Field(default_factory=list)


def test_the_bus_builds_what_validation_would() -> None:
    bus = Bus(None, cluster="c", node_id="n", epoch=lambda: 3)  # type: ignore[arg-type]
    fast = bus.envelope(Point(x=1), subject="s")
    again = typed_envelope(Point).model_validate(fast.model_dump())
    assert fast == again and encode(fast) == encode(again)
    slow = typed_envelope(Point)(type=Point.event_type, source=bus.source, subject="s", data=Point(x=1), epoch=3,
                                 seq=fast.seq, traceparent=fast.traceparent)
    assert fast.__pydantic_fields_set__ == slow.__pydantic_fields_set__
    assert fast.model_copy(update={"seq": 9}).seq == 9


@pytest.mark.parametrize("bad", [{"subject": "x" * 300}, {"epoch": -1}])
def test_what_the_bus_cannot_vouch_for_is_still_validated(bad: dict[str, Any]) -> None:
    epoch = bad.get("epoch", 0)
    bus = Bus(None, cluster="c", node_id="n", epoch=lambda: epoch)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        bus.envelope(Point(x=1), subject=bad.get("subject"))


def test_only_deeply_immutable_models_are_shared() -> None:
    assert shareable(Point)
    assert not shareable(Bag)


def _callbacks(model: type[Payload], seen: list[Envelope[Any]], max_bytes: list[int]) -> list[Any]:
    service = Service("share")

    async def handler(event: Envelope[Any], ctx: HandlerContext) -> None:
        seen.append(event)

    handler.__annotations__["event"] = Envelope[model]  # type: ignore[valid-type]
    service.on("test.#")(handler)
    spec = service.handlers[0]
    log = logging.getLogger("test")

    def context(delivery: Delivery) -> HandlerContext:
        return HandlerContext(None, "n", delivery.routing_key, 1, log)  # type: ignore[arg-type]

    return [make_callback(spec, context, max_bytes=limit) for limit in max_bytes]


@pytest.mark.parametrize("model, same", [(Point, True), (Bag, False)])
async def test_one_decode_is_shared_only_when_safe(model: type[Payload], same: bool) -> None:
    seen: list[Envelope[Any]] = []
    first, second, small = _callbacks(model, seen, [1 << 20, 1 << 20, 10])
    bus = Bus(None, cluster="c", node_id="n")  # type: ignore[arg-type]
    body = encode(bus.envelope(model(x=1) if model is Point else model(items=[1])))
    shared: dict[Any, Any] = {}
    assert await first(Delivery("test.k", body, {}, 1, "q1", shared)) is ACK
    assert await second(Delivery("test.k", body, {}, 1, "q2", shared)) is ACK
    assert (seen[0] is seen[1]) is same and seen[0] == seen[1]
    outcome = await small(Delivery("test.k", body, {}, 1, "q3", shared))
    assert outcome.fate is Fate.DEAD_LETTER and "exceeds the limit of 10" in (outcome.reason or "")


async def test_embedded_fan_out_hands_every_subscriber_the_event_and_counts_exactly() -> None:
    seen: list[Envelope[Any]] = []
    callbacks = _callbacks(Point, seen, [1 << 20] * 3)
    name = "share.handler"
    before = REGISTRY.get_sample_value("thatdam_messages_consumed_total", {"handler": name, "channel": "test.#"})
    count = REGISTRY.get_sample_value("thatdam_handler_duration_seconds_count", {"handler": name}) or 0.0
    async with EmbeddedTransport(prefix="t") as transport:
        for callback in callbacks:
            await transport.subscribe(QueueSpec(("test.#",)), callback)
        bus = Bus(transport, cluster="c", node_id="n")
        for n in range(50):
            await bus.publish(Point(x=n), "test.k")
        async with asyncio.timeout(5):
            while len(seen) < 150:
                await asyncio.sleep(0.01)
    assert sorted(event.data.x for event in seen) == sorted(list(range(50)) * 3)
    assert len({id(event) for event in seen}) == 50, "one decode per published event, shared by the three"
    after = REGISTRY.get_sample_value("thatdam_messages_consumed_total", {"handler": name, "channel": "test.#"})
    assert after == (before or 0.0) + 150
    assert REGISTRY.get_sample_value("thatdam_handler_duration_seconds_count", {"handler": name}) == count + 150
    infinite = REGISTRY.get_sample_value("thatdam_handler_duration_seconds_bucket", {"handler": name, "le": "+Inf"})
    assert infinite == count + 150
    assert HandlerMetrics.of(name, ("test.#",)).consumed >= 150
