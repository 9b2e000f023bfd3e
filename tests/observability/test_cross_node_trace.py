"""One intent, one trace, two nodes: ``thatdam publish --wait`` starts a capture on a camera node (the leader,
which declares the recorder stream, and indexes its frames); a proxy node relays its frames. ``bus-tail --trace
ID`` then follows the intent's result, the capture it started, the frames and their indexing (camera node) to
their relays (proxy node), all in the
trace id that ``publish --wait`` printed: trace context crosses processes in the envelope, and a proxy relay
continues the trace of the frame it relays, also when its ``flush`` task sends it later."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.frames_bus.support import KEY, Tap, publish_cli, start_node
from tests.nodes import NodeProcess, node_env
from tests.observability.support import has_consumer, stream_declared
from tests.tools.tail_process import TailProcess
from thatdam_bus.recorder.amqp_stream import stream_name
from thatdam_bus.tracing import cause_span_of, span_id_of, trace_id_of
from thatdam_bus.transports.amqp import AmqpTransport

CAMERA, RELAY = "cam-node", "relay-node"
PATTERN = "test://testsrc2?size=160x90&rate=30"
WANTED = {"intent.result": 1, f"capture.{CAMERA}.cam1.started": 1, f"frame.{CAMERA}.cam1.ready": 3,
          f"frame.{CAMERA}.cam1.indexed": 3, f"frame.{CAMERA}.cam1.latest": 3}
"""What bus-tail must have printed (routing key, or its first two words for the result) before we judge."""


def sender(record: dict[str, Any]) -> str:
    """The node id in an envelope's ``source`` (``thatdam://<cluster>/<node_id>/<service>``)."""
    return str(record["event"]["source"]).split("/")[3]


def kind(record: dict[str, Any]) -> str:
    key = str(record["routing_key"])
    return "intent.result" if key.startswith("intent.result.") else key


async def started(node: NodeProcess, needle: str) -> None:
    await asyncio.to_thread(node.wait_for_log, needle, 60.0)


async def read_until(tail: TailProcess, enough: Callable[[Counter[str]], bool], timeout: float = 90.0) -> None:
    seen: Counter[str] = Counter()
    async with asyncio.timeout(timeout):
        while not enough(seen):
            seen[kind(await tail.next_record(timeout))] += 1


async def test_bus_tail_follows_one_intent_across_two_nodes_and_five_event_types(
    cluster_env: dict[str, str], amqp_cleanup: Callable[[str], None], rabbitmq: str, prefix: str, tmp_path: Path
) -> None:
    for verb in ("start", "stop"):
        amqp_cleanup(f"{prefix}.capture.{verb}.{CAMERA}")
    amqp_cleanup(f"{prefix}.indexer.index")
    camera = start_node(tmp_path / "camera", CAMERA, **cluster_env, THATDAM_ROLE="leader",
                        THATDAM_SERVICES="capture,indexer", THATDAM_CLUSTER_KEY=KEY, THATDAM_THUMBNAIL_WIDTH="64")
    relay = start_node(tmp_path / "relay", RELAY, **cluster_env, THATDAM_ROLE="proxy", THATDAM_SERVICES="proxy",
                       THATDAM_PROXY_INTERVAL="0.5")
    tail: TailProcess | None = None
    transport = AmqpTransport(rabbitmq, prefix=prefix)
    try:
        await transport.start()
        relayed = await Tap.on(transport, "frame.*.*.latest")  # every relay, to check the ones bus-tail omits
        await started(relay, f"node {RELAY} up as proxy")
        await stream_declared(rabbitmq, stream_name(prefix), timeout=60)
        await has_consumer(rabbitmq, f"{prefix}.capture.start.{CAMERA}", timeout=60)

        (tmp_path / "cli").mkdir()
        result = await publish_cli(tmp_path / "cli", "intent.capture.start",
                                   {"node_id": CAMERA, "device": "cam1", "source": PATTERN, "fps": 10},
                                   timeout=30, env=cluster_env)
        assert result.code == 0, (result.stdout, result.stderr)
        intent_id, line = result.stdout.splitlines()
        match = re.fullmatch(rf"{intent_id} done by {CAMERA} \(trace ([0-9a-f]{{32}})\)", line)
        assert match, line
        trace = match.group(1)

        tail = await TailProcess.start(node_env(tmp_path / "tail", **cluster_env), "--trace", trace)
        await read_until(tail, lambda seen: all(seen[key] >= n for key, n in WANTED.items()))
    finally:
        if tail is not None:
            await tail.kill()
        await transport.aclose()
        camera.kill()
        relay.kill()

    records = tail.records
    assert {trace_id_of(record["event"]["traceparent"]) for record in records} == {trace}
    assert len({record["event"]["traceparent"] for record in records}) == len(records), "one span per event"
    assert {sender(record) for record in records} == {CAMERA, RELAY}
    assert len({record["event"]["type"] for record in records}) >= 3
    assert {record["event"]["type"] for record in records} >= {
        "thatdam.intent.result.v1", "thatdam.capture.started.v1", "thatdam.frame.ready.v1",
        "thatdam.frame.indexed.v1", "thatdam.frame.latest.v1"}
    [result_record] = [record for record in records if kind(record) == "intent.result"]
    assert result_record["routing_key"] == f"intent.result.{intent_id}"
    assert result_record["event"]["data"]["intent_id"] == intent_id
    relays = [record for record in records if record["routing_key"].endswith(".latest")]
    assert all(sender(record) == RELAY and record["event"]["data"]["relayed_by"] == RELAY for record in relays)
    assert len(relayed.seen) >= len(relays) and {trace_id_of(seen.event["traceparent"]) for seen in relayed.seen} \
        == {trace}, "every relay of the traced frames continues the trace, also the flush task's"
    frame_ids = {record["event"]["id"] for record in records if record["routing_key"].endswith(".ready")}
    assert relays[0]["event"]["data"]["frame_event_id"] in frame_ids, "the first relay is of a traced frame"
    indexed = [record["event"]["data"] for record in records if record["routing_key"].endswith(".indexed")]
    assert all(news["indexed_by"] == CAMERA for news in indexed)
    assert {news["frame_event_id"] for news in indexed} <= frame_ids, "each announcement is of a traced frame"

    # What caused what (tracestate): the intent (not recorded) caused its result, the capture and the frames;
    # each frame caused its indexing and its relay.
    span_of = {record["event"]["id"]: span_id_of(record["event"]["traceparent"]) for record in records}
    cause = {record["event"]["id"]: cause_span_of(record["event"].get("tracestate")) for record in records}
    first_level = [record["event"]["id"] for record in records if kind(record) == "intent.result"
                   or record["routing_key"].endswith((".started", ".ready"))]
    [intent_span] = {cause[event_id] for event_id in first_level}
    assert intent_span is not None and intent_span not in span_of.values()
    for record in records:
        if record["routing_key"].endswith((".indexed", ".latest")):
            assert cause[record["event"]["id"]] == span_of[record["event"]["data"]["frame_event_id"]], \
                "caused by the frame it is about"
