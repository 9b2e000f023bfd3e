"""The metrics endpoint of a node on RabbitMQ, read with prometheus-client's own parser: the counters by channel
move exactly as much as the test makes the node publish and consume, and the dead-lettered counter, by handler,
channel and reason, matches what is in the dead-letter queue, message by message: each parked message's queue
and reason headers, classified, give the same counts."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.frames_bus.support import KEY, publish_cli, start_node
from tests.nodes import NodeProcess
from tests.observability.support import free_port, has_consumer
from thatdam_bus import CaptureStarted, FrameReady
from thatdam_bus.envelope import encode
from thatdam_bus.publisher import Bus
from thatdam_bus.topics import LEADER_ELECTED, topic_matches
from thatdam_bus.transports.amqp import AmqpTransport
from thatdam_bus.transports.base import ORIGINAL_KEY_HEADER, QUEUE_HEADER, REASON_HEADER
from thatdam_bus.transports.batching import BATCH_HEADER

NODE = "metrics-node"
PATTERN = "test://testsrc2?size=160x90&rate=30"
MAX_BYTES = 4096
INDEX, ELECTED = "indexer.index", "leadership.leader_elected"  # a durable queue, a fan-out tap
CHANNEL = {INDEX: "frame.*.*.ready", ELECTED: LEADER_ELECTED}
"""Each handler's channel label: the pattern it binds."""
REASON_CLASSES = (  # a dead letter's reason header -> the reason class the metric counts it under
    (r"gave up after \d+ attempts: ", "gave_up"),
    (r"body is (not JSON|JSON \w+, not an object)", "not_json"),
    (r"invalid envelope: ", "invalid_envelope"),
    (r"message of \d+ bytes exceeds the limit", "too_large"),
    (r"event type '[^']+' is not '[^']+' handled here", "wrong_type"),
    (r"invalid [\w.]+ data: ", "invalid_data"),
    (r"blob missing: ", "rejected"),
)
Series = tuple[str, frozenset[tuple[str, str]]]


class Scrape:
    """One parsed scrape: every sample by name and labels."""

    def __init__(self, text: str) -> None:
        self.samples: dict[Series, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def get(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def by(self, name: str, *keys: str) -> Counter[tuple[str, ...]]:
        """Every series of ``name`` as label values ``keys`` -> value."""
        found: Counter[tuple[str, ...]] = Counter()
        for (sample, labels), value in self.samples.items():
            if sample == name:
                found[tuple(dict(labels)[key] for key in keys)] = int(value)
        return found

    def published(self, channel: str) -> float:
        return self.get("thatdam_messages_published_total", channel=channel)

    def consumed(self, handler: str, channel: str) -> float:
        return self.get("thatdam_messages_consumed_total", handler=handler, channel=channel)

    def dead_lettered(self) -> Counter[tuple[str, ...]]:
        return self.by("thatdam_messages_dead_lettered_total", "handler", "channel", "reason")


def scrape(port: int) -> Scrape:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return Scrape(response.read().decode())


async def scrape_until(port: int, predicate: Callable[[Scrape], bool], what: str, timeout: float = 60.0) -> Scrape:
    got: Scrape | None = None
    try:
        async with asyncio.timeout(timeout):
            while not predicate(got := await asyncio.to_thread(scrape, port)):
                await asyncio.sleep(0.1)
    except TimeoutError:
        shown = {} if got is None else {key: value for key, value in got.samples.items() if "messages" in key[0]}
        raise AssertionError(f"no {what} within {timeout}s; last scrape: {shown}") from None
    assert got is not None
    return got


@pytest.fixture
def metrics_node(cluster_env: dict[str, str], amqp_cleanup: Callable[[str], None], prefix: str,
                 tmp_path: Path) -> Iterator[tuple[NodeProcess, int]]:
    for name in ("indexer.index", f"capture.start.{NODE}", f"capture.stop.{NODE}"):
        amqp_cleanup(f"{prefix}.{name}")
    port = free_port()
    node = start_node(tmp_path / "node", NODE, **cluster_env, THATDAM_ROLE="worker",
                      THATDAM_SERVICES="capture,indexer", THATDAM_CLUSTER_KEY=KEY, THATDAM_METRICS_PORT=str(port),
                      THATDAM_MAX_ATTEMPTS="2", THATDAM_MAX_MESSAGE_BYTES=str(MAX_BYTES),
                      THATDAM_THUMBNAIL_WIDTH="64")
    try:
        node.wait_for_log(f"node {NODE} up as worker", timeout=60)
        yield node, port
    finally:
        node.kill()


async def test_counters_by_channel_move_exactly_as_the_node_publishes_and_consumes(
    metrics_node: tuple[NodeProcess, int], cluster_env: dict[str, str], rabbitmq: str, prefix: str, tmp_path: Path
) -> None:
    _, port = metrics_node
    await has_consumer(rabbitmq, f"{prefix}.capture.start.{NODE}")
    before = await asyncio.to_thread(scrape, port)
    (tmp_path / "cli").mkdir()

    async def intent(verb: str, **data: Any) -> None:
        result = await publish_cli(tmp_path / "cli", f"intent.capture.{verb}", {"node_id": NODE, "device": "cam1",
                                   **data}, timeout=30, env=cluster_env)
        assert result.code == 0 and f"done by {NODE}" in result.stdout, (result.stdout, result.stderr)

    def delta(now: Scrape, read: Callable[[Scrape], float]) -> int:
        return int(read(now) - read(before))

    def frames(now: Scrape) -> float:
        return now.published("frame.*.*.ready")

    await intent("start", source=PATTERN, fps=10)
    await scrape_until(port, lambda now: delta(now, frames) >= 5, "5 frames published")
    await intent("stop")
    stopped = await scrape_until(port, lambda now: delta(now, lambda s: s.published("capture.*.*.stopped")) == 1,
                                 "the capture stopped")
    published = delta(stopped, frames)

    def indexed(now: Scrape) -> float:
        return now.consumed(INDEX, "frame.*.*.ready")

    after = await scrape_until(port, lambda now: delta(now, indexed) >= published, "every frame consumed")
    assert delta(after, frames) == published, "no frame after the capture stopped"
    assert delta(after, indexed) == published
    assert delta(after, lambda s: s.get("thatdam_handler_duration_seconds_count", handler=INDEX)) == published
    assert delta(after, lambda s: s.get("thatdam_frames_captured_total", device="cam1")) == published
    assert delta(after, lambda s: s.published("intent.result.*")) == 2
    assert delta(after, lambda s: s.published("capture.*.*.started")) == 1
    assert delta(after, lambda s: s.consumed("capture.start", "intent.capture.start")) == 1
    assert delta(after, lambda s: s.consumed("capture.stop", "intent.capture.stop")) == 1
    assert after.dead_lettered() == before.dead_lettered(), "good frames are never dead-lettered"
    assert after.get("thatdam_node_role", role="worker") == 1


# -- dead letters ---------------------------------------------------------------------------------------------


def envelope(event_type: str, data: Any, n: int) -> dict[str, Any]:
    return {"specversion": "1.0", "id": f"bad-{event_type}-{n}", "type": event_type,
            "source": "thatdam://test/intruder/obs", "time": datetime.now(UTC).isoformat(), "data": data}


def frame(uri: str, seq: int) -> FrameReady:
    return FrameReady(node_id="intruder", device="cam0", seq=seq, keyframe=True, width=64, height=36,
                      captured_at=datetime.now(UTC), uri=uri, sha256="0" * 64, size_bytes=10)


class BadSender:
    """Publishes what a node must dead-letter and remembers, by body, the (handler, reason) it expects."""

    def __init__(self, transport: AmqpTransport) -> None:
        self.transport = transport
        self.bus = Bus(transport, cluster="test", node_id="intruder")
        self.expected: dict[bytes, tuple[str, str]] = {}

    async def raw(self, key: str, body: bytes, handler: str, reason: str,
                  headers: dict[str, Any] | None = None) -> None:
        self.expected[body] = (handler, reason)
        await self.transport.publish(key, body, durable=True, headers=headers)

    async def event(self, key: str, payload: Any, handler: str, reason: str) -> None:
        sent = await self.bus.publish(payload, key)
        self.expected[encode(sent)] = (handler, reason)

    def counts(self) -> Counter[tuple[str, ...]]:
        """By (handler, channel, reason), as the metric counts."""
        return Counter((handler, CHANNEL[handler], reason) for handler, reason in self.expected.values())


async def send_bad_messages(sender: BadSender, blobs: Path) -> None:
    key = "frame.intruder.cam0.ready"
    ready = FrameReady.event_type
    for n in range(3):
        await sender.raw(key, b"\x00 not json %d" % n, INDEX, "not_json")
    for n in range(2):
        await sender.raw(key, orjson.dumps({"hello": n}), INDEX, "invalid_envelope")
        await sender.raw(key, orjson.dumps(envelope(ready, {"pad": "x" * MAX_BYTES}, n)), INDEX, "too_large")
        await sender.raw(key, orjson.dumps(envelope(ready, {"node_id": "intruder"}, n)), INDEX, "invalid_data")
        await sender.raw("cluster.leader.elected", b"\x00 not an election %d" % n, ELECTED, "not_json")
    # A message that says it is a batch but is not one: the handler sees it (and counts it), not only the DLQ.
    await sender.raw(key, b"\x00\x00\x00\x09not a batch", INDEX, "not_json", headers={BATCH_HEADER: 1})
    await sender.event(key, CaptureStarted(node_id="intruder", device="cam0", source="x"), INDEX, "wrong_type")
    for n in range(3):  # a claim check whose blob is missing: the indexer rejects it
        await sender.event(key, frame(f"file://{blobs}/missing-{n}.jpg", n), INDEX, "rejected")
    (blobs / "a-file").write_bytes(b"not a directory")
    for n in range(2):  # NotADirectoryError: an I/O error is retried, and dead-lettered on the last attempt
        await sender.event(key, frame(f"file://{blobs}/a-file/{n}.jpg", n), INDEX, "gave_up")


async def dead_letter_queue(url: str, name: str) -> tuple[int, list[aio_pika.abc.AbstractIncomingMessage]]:
    """The queue's message count (a passive declare), then every message in it (taken, not acked)."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        count = queue.declaration_result.message_count or 0
        messages = []
        while (message := await queue.get(no_ack=False, fail=False)) is not None:
            messages.append(message)
        return count, messages


async def test_dead_lettered_counts_by_reason_match_the_dead_letter_queue(
    metrics_node: tuple[NodeProcess, int], rabbitmq: str, prefix: str, tmp_path: Path
) -> None:
    _, port = metrics_node
    await has_consumer(rabbitmq, f"{prefix}.indexer.index")
    before = await asyncio.to_thread(scrape, port)
    assert sum(before.dead_lettered().values()) == 0
    async with AmqpTransport(rabbitmq, prefix=prefix) as transport:
        sender = BadSender(transport)
        await send_bad_messages(sender, tmp_path)
    expected = sender.counts()
    total = sum(expected.values())

    after = await scrape_until(port, lambda now: sum(now.dead_lettered().values()) >= total, f"{total} dead letters")
    queue = f"{prefix}.dead-letters"
    async with asyncio.timeout(30):  # the counter moves just before the dead letter is published and confirmed
        while (count := (await dead_letter_queue(rabbitmq, queue))[0]) < total:
            await asyncio.sleep(0.1)
    count, messages = await dead_letter_queue(rabbitmq, queue)
    parked = Counter(parked_as(message, prefix) for message in messages)
    assert count == len(messages) == total
    assert parked == after.dead_lettered(), "the queue's headers, classified, must give the metric's counts"
    assert after.dead_lettered() == expected
    for message in messages:
        handler, reason = sender.expected[message.body]
        assert parked_as(message, prefix) == (handler, CHANNEL[handler], reason), message.headers[REASON_HEADER]
    retried = sum(reason == "gave_up" for _, _, reason in expected.elements())
    assert (after.consumed(INDEX, "frame.*.*.ready") - before.consumed(INDEX, "frame.*.*.ready")
            == sum(handler == INDEX for handler, _, _ in expected.elements()) + retried)


def parked_as(message: aio_pika.abc.AbstractIncomingMessage, prefix: str) -> tuple[str, str, str]:
    """(handler, channel, reason class) of a dead letter, from its own headers: the queue it left names the
    handler (its durable queue, or a tap of the fan-out one), the reason text gives the class."""
    queue, reason = str(message.headers[QUEUE_HEADER]), str(message.headers[REASON_HEADER])
    handler = INDEX if queue == f"{prefix}.{INDEX}" else ELECTED
    assert handler == INDEX or queue.startswith(f"{prefix}.tap."), queue
    assert topic_matches(CHANNEL[handler], str(message.headers[ORIGINAL_KEY_HEADER]))
    classes = [name for pattern, name in REASON_CLASSES if re.match(pattern, reason)]
    assert len(classes) == 1, f"reason {reason!r} matches {classes}"
    return handler, CHANNEL[handler], classes[0]
