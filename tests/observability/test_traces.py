"""One causal chain, one trace id: a signed intent, its result, and the capture it started (the started event
and every frame), on a solo node; ``thatdam publish --wait`` prints the id and ``bus-tail --trace`` replays
the chain from the recorder."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.frames_bus.support import KEY, publish_cli, start_node
from tests.nodes import BIN, NodeProcess, node_env
from thatdam_bus.tracing import trace_id_of

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
