"""The recorder service: what keeps the flight recorder, run by the node like its other core services.

* leader on RabbitMQ: declares the stream ``<prefix>.recorder`` at the start of each term (idempotent; the
  broker does the recording from then on, whoever leads, and keeps it across node restarts);
* solo: taps ``Patterns.RECORDED`` on the embedded broker with a lossy fan-out queue (the recorder must never
  hold the bus back: under a burst larger than the queue it loses its oldest copies, like any tap) and appends
  every message to the ring under ``<state dir>/recorder``, which outlives the process. What the queue drops
  is not hidden: the ring leaves their offsets unused just before the next message it records (exactly there
  unless more were dropped while that message was being taken), and bus-tail reports the hole.

``THATDAM_RECORDER_MAX_BYTES=0`` turns both off.
"""

from __future__ import annotations

import asyncio
import contextlib

from thatdam_bus.context import TaskContext
from thatdam_bus.events.node import Role
from thatdam_bus.recorder.amqp_stream import declare_recorder_stream
from thatdam_bus.recorder.disk_ring import DiskRing, open_disk_ring
from thatdam_bus.service import Service
from thatdam_bus.topics import Patterns
from thatdam_bus.transports.base import ACK, Delivery, LossySubscription, Outcome, QueueSpec

EXPIRE_EVERY_S = 10.0
RECORDER_QUEUE_PREFETCH = 1
"""One worker: entries are appended in the order the broker routed them."""

recorder = Service("recorder", roles={Role.LEADER, Role.SOLO},
                   description="Keeps the flight recorder: a RabbitMQ stream (declared by the leader) or, "
                               "solo, a bounded ring of segment files in the state directory.")


@recorder.task()
async def keep_recorder(ctx: TaskContext) -> None:
    settings = ctx.settings
    if settings.recorder_max_bytes == 0:
        return
    if ctx.bus.transport.capabilities.scheme == "amqp":
        if settings.amqp_url is None:
            return
        try:
            await declare_recorder_stream(
                str(settings.amqp_url), settings.prefix, max_age_s=settings.recorder_max_age,
                max_bytes=settings.recorder_max_bytes, segment_bytes=settings.recorder_segment_bytes,
                timeout=settings.connect_timeout + 10.0)
        except Exception as exc:
            ctx.log.error("could not declare the flight recorder stream: %r", exc)
        return
    ring = await asyncio.to_thread(
        open_disk_ring, settings.state_dir, max_bytes=settings.recorder_max_bytes,
        segment_bytes=settings.recorder_segment_bytes, max_age_s=settings.recorder_max_age)
    try:
        await _record(ctx, ring)
    finally:
        ring.close()


async def _record(ctx: TaskContext, ring: DiskRing) -> None:
    accounted = 0
    lossy: LossySubscription | None = None
    """The subscription, once made, if its queue counts what it drops (checked once: a runtime protocol check
    costs microseconds)."""

    async def append(delivery: Delivery) -> Outcome:
        nonlocal accounted
        if lossy is not None and lossy.dropped > accounted:
            lost, accounted = lossy.dropped - accounted, lossy.dropped
            ctx.log.warning("flight recorder: its queue overflowed; %d events not recorded", lost)
            ring.skip(lost)
        ring.append(delivery.routing_key, delivery.body, delivery.headers)
        return ACK

    spec = QueueSpec(patterns=Patterns.RECORDED, prefetch=RECORDER_QUEUE_PREFETCH)
    subscription = await ctx.bus.transport.subscribe(spec, append)
    lossy = subscription if isinstance(subscription, LossySubscription) else None
    ctx.log.info("flight recorder: %r", ring)
    try:
        while True:
            await asyncio.sleep(EXPIRE_EVERY_S)
            ring.expire()
    finally:
        with contextlib.suppress(Exception):
            await subscription.cancel()
