"""One causal chain, one trace id: a signed intent, its result, and the capture it started (the started event
and every frame), on a solo node; ``thatdam publish --wait`` prints the id and ``bus-tail --trace`` replays
the chain from the recorder. A proxy's relays continue the trace of the frame they relay, also the coalesced
ones its ``flush`` task sends after the handler returned (across nodes: ``test_cross_node_trace``)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from handlers import proxy
from tests.frames_bus.support import KEY, Tap, publish_cli, start_node
from tests.frames_bus.test_proxy import frame
from tests.nodes import BIN, NodeProcess, node_env
from thatdam_bus import Role, load_settings
from thatdam_bus.node.services import HandlerHost
from thatdam_bus.publisher import Bus
from thatdam_bus.tracing import new_traceparent, trace_id_of, trace_scope
from thatdam_bus.transports.embedded import EmbeddedTransport

NODE = "node-t"
PATTERN = "test://testsrc2?size=160x90&rate=30"


@pytest.fixture
def capture_node(state_dir: Path) -> Iterator[NodeProcess]:
    node = start_node(state_dir, NODE, THATDAM_SERVICES="capture", THATDAM_CLUSTER_KEY=KEY)
    try:
        node.wait_for_log("flight recorder")
        yield node
    finally:
        node.kill()


async def test_an_intent_its_result_and_the_frames_it_caused_share_one_trace(capture_node: NodeProcess) -> None:
    state_dir = capture_node.state_dir
    result = await publish_cli(state_dir, "intent.capture.start",
                               {"node_id": NODE, "device": "cam1", "source": PATTERN, "fps": 10})
    assert result.code == 0, (result.stdout, result.stderr)
    intent_id, line = result.stdout.splitlines()
    match = re.fullmatch(rf"{intent_id} done by {NODE} \(trace ([0-9a-f]{{32}})\)", line)
    assert match, line
    trace = match.group(1)

    tail = await asyncio.create_subprocess_exec(
        str(BIN / "bus-tail"), "--trace", trace, "--json", "--count", "5", "--timeout", "30",
        env=node_env(state_dir, THATDAM_CLUSTER_KEY=KEY), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        out, err = await tail.communicate()
    assert tail.returncode == 0, err.decode()
    records = [json.loads(line) for line in out.decode().splitlines()]
    keys = [record["routing_key"] for record in records]
    assert {trace_id_of(record["event"]["traceparent"]) for record in records} == {trace}
    assert len({record["event"]["traceparent"] for record in records}) == 5, "one span per event"
    # The recorder keeps every channel but the intents themselves (topics.Patterns.RECORDED): the chain starts
    # at the intent's result, which names the intent.
    assert keys[0] == f"intent.result.{intent_id}" and records[0]["event"]["data"]["intent_id"] == intent_id
    assert f"capture.{NODE}.cam1.started" in keys
    assert f"frame.{NODE}.cam1.ready" in keys


async def test_a_proxy_relay_continues_the_trace_of_the_frame_it_relays(tmp_path: Path) -> None:
    """Five frames at once: the first is relayed by the handler, the newest of the other four by the flush task
    (nothing else arrives to trigger the handler), which must still send it in that frame's trace."""
    async with EmbeddedTransport(prefix="t") as transport:
        tap = await Tap.on(transport, "frame.*.*.latest")
        camera, relay = Bus(transport, cluster="test", node_id="cam-node"), Bus(transport, cluster="test",
                                                                                node_id="px")
        host = HandlerHost(relay, [proxy.service], max_bytes=65536,
                           settings=load_settings(state_dir=tmp_path, proxy_interval=0.2))
        await host.apply_role(Role.PROXY)
        traces = [new_traceparent() for _ in range(5)]
        try:
            for seq, traceparent in enumerate(traces):
                with trace_scope(traceparent):
                    await camera.publish(frame(seq), "frame.cam-node.cam0.ready")
            await tap.wait(lambda: len(tap.seen) >= 2, "the handler's relay and the flush task's")
        finally:
            await host.stop_all()
    first, flushed = tap.seen[:2]
    assert (first.data["seq"], flushed.data["seq"], flushed.data["skipped"]) == (0, 4, 3)
    assert trace_id_of(first.event["traceparent"]) == trace_id_of(traces[0])
    assert trace_id_of(flushed.event["traceparent"]) == trace_id_of(traces[4])
