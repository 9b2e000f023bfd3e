"""A broker crash in the middle of a stream of 10,000 durable events loses none of them.

Eight producers share one ``Bus`` with an outbox and publish 1,250 ``FrameReady`` events each; a consumer runs
the real dispatch path (idempotent by envelope id) on a durable queue. After 3,000 events were accepted the
private RabbitMQ node is killed (SIGKILL: no clean shutdown) and kept down until the outbox holds 3,000 events,
then booted again on the same data directory. Every event the publisher accepted (confirmed, or held in the
outbox) must then be delivered at least once, processed exactly once, and first delivered in each producer's
order. The outage length, the peak outbox size and the duplicates are reported as figures.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.reliability.private_broker import PrivateBroker
from tests.support import wait_until
from thatdam_bus.context import HandlerContext
from thatdam_bus.dispatch import make_callback
from thatdam_bus.envelope import Envelope
from thatdam_bus.errors import ThatdamError
from thatdam_bus.events.frame import FrameReady
from thatdam_bus.outbox import Outbox
from thatdam_bus.publisher import Bus
from thatdam_bus.service import Service
from thatdam_bus.transports.amqp import AmqpTransport
from thatdam_bus.transports.base import Delivery, Outcome, QueueKind

pytestmark = [pytest.mark.broker, pytest.mark.timeout(240)]  # a private broker boots twice; slow under load

EVENTS, PRODUCERS = 10_000, 8
CRASH_AFTER = 3_000
HELD_BEFORE_RESTART = 3_000
PREFIX = "reliability"

processed: list[str] = []
service = Service("crash")


@service.on("frame.#", queue=QueueKind.DURABLE, prefetch=256)
async def record(event: Envelope[FrameReady], ctx: HandlerContext) -> None:
    """The side effect that must happen exactly once per event."""
    processed.append(event.id)


def frame(device: str, seq: int) -> FrameReady:
    return FrameReady(node_id="producer", device=device, seq=seq, captured_at=datetime.now(UTC), width=64,
                      height=48, uri=f"file:///blobs/{device}/{seq}.jpg", sha256=hashlib.sha256(b"").hexdigest(),
                      size_bytes=0, keyframe=True)


async def consume(url: str, arrivals: list[str]) -> AmqpTransport:
    """The real dispatch callback (decode, validate, skip seen ids), wrapped to log every arrival's id."""
    transport = AmqpTransport(url, prefix=PREFIX)
    await transport.start()
    bus = Bus(transport, cluster="test", node_id="consumer")
    [spec] = service.handlers
    dispatch = make_callback(spec, lambda d: HandlerContext(bus, "consumer", d.routing_key, d.attempt,
                                                            logging.getLogger("test")), max_bytes=1 << 20)

    async def counted(delivery: Delivery) -> Outcome:
        arrivals.append(str(delivery.headers.get("ce-id")))  # before any await: arrival order
        return await dispatch(delivery)

    await transport.subscribe(spec.queue, counted)
    return transport


async def test_no_durable_event_is_lost_across_a_broker_crash(
    private_broker: PrivateBroker, tmp_path: Path, figure: Callable[[str, object], None]
) -> None:
    processed.clear()
    arrivals: list[str] = []
    consumer = await consume(private_broker.url, arrivals)
    transport = AmqpTransport(private_broker.url, prefix=PREFIX)
    await transport.start()
    outbox = Outbox(tmp_path / "state")
    bus = Bus(transport, cluster="test", node_id="producer", outbox=outbox)
    accepted: dict[str, tuple[str, int]] = {}
    refused: list[ThatdamError] = []

    async def produce(device: str) -> None:
        for seq in range(EVENTS // PRODUCERS):
            try:
                sent = await bus.publish(frame(device, seq), f"frame.producer.{device}.ready")
            except ThatdamError as exc:
                refused.append(exc)
                continue
            accepted[sent.id] = (device, seq)

    started = time.monotonic()
    try:
        async with asyncio.TaskGroup() as group:
            drain = group.create_task(bus.drain())
            producers = [group.create_task(produce(f"cam{k}")) for k in range(PRODUCERS)]
            await wait_until(lambda: len(accepted) >= CRASH_AFTER, 30, f"{CRASH_AFTER} events accepted")
            crashed_at = time.monotonic()
            await private_broker.crash()
            await wait_until(lambda: len(outbox) >= HELD_BEFORE_RESTART, 30, "events held while down")
            held_peak = len(outbox)
            private_broker.start()
            await private_broker.ready()
            outage_s = time.monotonic() - crashed_at
            await asyncio.gather(*producers)
            await wait_until(lambda: len(outbox) == 0 and set(processed) >= set(accepted), 40,
                             f"every accepted event processed ({len(set(processed))}/{len(accepted)}, "
                             f"{len(outbox)} still held)")
            drain.cancel()
    finally:
        await transport.aclose()
        await consumer.aclose()

    deliveries = Counter(arrivals)
    assert refused == [] and len(accepted) == EVENTS
    assert all(deliveries[event_id] >= 1 for event_id in accepted), "an accepted event was never delivered"
    assert Counter(processed).most_common(1)[0][1] == 1 and set(processed) == set(accepted)
    first_seqs: dict[str, list[int]] = {}
    for event_id in dict.fromkeys(arrivals):  # first arrival of each id, in arrival order
        device, seq = accepted[event_id]
        first_seqs.setdefault(device, []).append(seq)
    assert all(seqs == sorted(seqs) for seqs in first_seqs.values()), "a producer's events arrived out of order"
    assert not outbox.path.exists(), "the outbox file is removed once it is empty"
    figures = {"events": EVENTS, "outage_s": round(outage_s, 2), "held_peak": held_peak,
               "forwarded_from_outbox": outbox.forwarded, "duplicate_deliveries": len(arrivals) - len(deliveries),
               "total_s": round(time.monotonic() - started, 2)}
    for name, value in figures.items():
        figure(name, value)
