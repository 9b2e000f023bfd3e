"""The indexer: verified claim checks only, each frame once, none lost when its node is killed mid-burst."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import av
import orjson
import pytest

from handlers import indexer
from tests.frames_bus.support import Tap, catalogue_ids, start_node
from tests.support import Collector, wait_until
from thatdam_bus import BlobStore, FrameReady, Patterns, Role, load_settings
from thatdam_bus.frames import JpegEncoder
from thatdam_bus.node.services import HandlerHost
from thatdam_bus.publisher import Bus
from thatdam_bus.tracing import trace_id_of
from thatdam_bus.transports.amqp import AmqpTransport
from thatdam_bus.transports.base import REASON_HEADER, QueueSpec, Source
from thatdam_bus.transports.embedded import EmbeddedTransport

BURST = 1000


def real_blobs(store: BlobStore, count: int) -> list[FrameReady]:
    """``count`` distinct JPEGs (noise, so no two share bytes) in ``store``, each with its frame-ready payload."""
    encoder, rng = JpegEncoder(32), random.Random(11)
    frames = []
    for seq in range(count):
        frame = av.VideoFrame(32, 16, "gray")
        frame.planes[0].update(rng.randbytes(frame.planes[0].line_size * 16))
        jpeg = encoder.encode(frame)
        blob = store.put(jpeg.data)
        frames.append(FrameReady(node_id="cam-node", device="cam0", seq=seq, pts=seq, keyframe=True,
                                 captured_at=datetime.now(UTC), width=jpeg.width, height=jpeg.height,
                                 uri=blob.uri, sha256=blob.sha256, size_bytes=blob.size))
    return frames


@dataclass
class Indexing:
    bus: Bus
    dead: Collector
    announced: Collector
    host: HandlerHost


@pytest.fixture
async def indexing(tmp_path: Path) -> AsyncIterator[Indexing]:
    async with EmbeddedTransport(prefix="t") as transport:
        bus = Bus(transport, cluster="test", node_id="n1")
        dead, announced = Collector(), Collector()
        await transport.subscribe(QueueSpec(patterns=("#",), source=Source.DEAD_LETTERS), dead)
        await transport.subscribe(QueueSpec(patterns=(Patterns.FRAMES_INDEXED,)), announced)
        host = HandlerHost(bus, [indexer.service], max_bytes=65536, settings=load_settings(state_dir=tmp_path))
        await host.apply_role(Role.WORKER)
        try:
            yield Indexing(bus, dead, announced, host)
        finally:
            await host.stop_all()
            host.state_of("indexer").close()


async def test_a_frame_is_indexed_once_announced_in_its_trace_and_a_broken_claim_check_is_dead_lettered(
    indexing: Indexing, tmp_path: Path
) -> None:
    bus, dead = indexing.bus, indexing.dead
    good, missing, tampered, resized = real_blobs(BlobStore(tmp_path / "blobs"), 4)
    Path(missing.uri.removeprefix("file://")).unlink()
    Path(tampered.uri.removeprefix("file://")).write_bytes(b"not the frame")
    resized = resized.model_copy(update={"size_bytes": resized.size_bytes + 1})
    sent = await bus.publish(good, "frame.cam-node.cam0.ready")
    for frame in (missing, tampered, resized):
        await bus.publish(frame, "frame.cam-node.cam0.ready")
    await dead.wait_count(3)
    reasons = " | ".join(d.headers[REASON_HEADER] for d in dead.got)
    assert f"blob missing: {missing.uri.removeprefix('file://')}" in reasons
    assert "does not match its sha256" in reasons
    assert f"is {resized.size_bytes - 1} bytes, the event says {resized.size_bytes}" in reasons
    catalogue = tmp_path / "index.sqlite"
    await wait_until(lambda: catalogue_ids(catalogue) == [sent.id], what="the good frame indexed")
    await indexing.announced.wait_count(1)
    [announcement] = indexing.announced.got
    news = orjson.loads(announcement.body)
    assert announcement.routing_key == "frame.cam-node.cam0.indexed"
    assert news["data"] == {"node_id": "cam-node", "device": "cam0", "seq": good.seq, "frame_event_id": sent.id,
                            "sha256": good.sha256, "indexed_by": "n1"}
    assert trace_id_of(news["traceparent"]) == trace_id_of(sent.traceparent or ""), "in the frame's trace"

    # A redelivery after a restart (a fresh catalogue object: no in-memory memory of ids) adds nothing.
    again = indexer.Catalogue(catalogue)
    assert await again.add(sent) is False and again.duplicates == 1
    again.close()
    assert catalogue_ids(catalogue) == [sent.id]


async def test_only_file_uris_can_be_verified(tmp_path: Path) -> None:
    [frame] = real_blobs(BlobStore(tmp_path), 1)
    with pytest.raises(indexer.BlobProblem, match="only file://"):
        indexer.verify_blob(frame.model_copy(update={"uri": "http://elsewhere/blob.jpg"}))
    indexer.verify_blob(frame)


# -- a node running only the indexer, SIGKILLed in the middle of a burst ------------------------------------


@pytest.fixture
def indexer_env(rabbitmq: str, prefix: str, amqp_cleanup: Callable[[str], None]) -> dict[str, str]:
    amqp_cleanup(f"{prefix}.indexer.index")
    return {"THATDAM_AMQP_URL": rabbitmq, "THATDAM_PREFIX": prefix, "THATDAM_ROLE": "worker",
            "THATDAM_SERVICES": "indexer"}


async def test_an_indexer_killed_mid_burst_indexes_every_event_exactly_once_after_restart(
    indexer_env: dict[str, str], rabbitmq: str, prefix: str, tmp_path: Path
) -> None:
    frames = await asyncio.to_thread(real_blobs, BlobStore(tmp_path / "blobs"), BURST)
    state, catalogue = tmp_path / "indexer", tmp_path / "indexer" / "index.sqlite"
    node = start_node(state, "indexer-a", **indexer_env)
    try:
        node.wait_for_log("up as worker")
        async with AmqpTransport(rabbitmq, prefix=prefix) as transport:
            dead = Collector()
            await transport.subscribe(QueueSpec(patterns=("#",), source=Source.DEAD_LETTERS), dead)
            bus = Bus(transport, cluster="test", node_id="cam-node")
            published: list[str] = []

            async def burst() -> None:
                """Durable publishes, 20 in flight: each returns once the broker confirmed it. Faster than
                the indexer, so the kill finds a backlog in the queue and deliveries in flight."""
                for start in range(0, BURST, 20):
                    sent = await asyncio.gather(*(bus.publish(frame, "frame.cam-node.cam0.ready")
                                                  for frame in frames[start:start + 20]))
                    published.extend(envelope.id for envelope in sent)

            async with asyncio.TaskGroup() as group:
                group.create_task(burst())
                await wait_until(lambda: len(catalogue_ids(catalogue)) >= 100, 30, "100 frames indexed")
                node.kill()  # SIGKILL: unacked deliveries go back to the queue
                at_kill, sent_at_kill = len(catalogue_ids(catalogue)), len(published)
            assert at_kill < BURST and sent_at_kill < BURST, "the kill must land in the middle of the burst"
            print(f"killed with {at_kill} indexed and {sent_at_kill} of {BURST} published")

            node = start_node(state, "indexer-a", **indexer_env)
            await wait_until(lambda: len(catalogue_ids(catalogue)) >= BURST, 60, f"{BURST} frames indexed")
            node.wait_for_log("up as worker")
            tap = await Tap.on(transport, "node.indexer-a.heartbeat")
            await tap.wait(lambda: len(tap.seen) >= 2, "the restarted node idles on")  # no late duplicates
        ids = catalogue_ids(catalogue)
        assert len(ids) == BURST and set(ids) == set(published), "every event indexed exactly once"
        assert dead.got == []
    finally:
        node.kill()
