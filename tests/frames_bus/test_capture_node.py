"""A real solo ``thatdam up`` node with capture and indexer: frames on the bus whose blobs hold, and sources that
fail retried with growing backoff while the node stays alive."""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.frames.media import check_blob, make_clip
from tests.frames_bus.support import Tap, catalogue_ids, publish_cli, start_node
from tests.nodes import NodeProcess
from thatdam_bus.transports.socket_client import SocketTransport

NODE = "solo-a"


@pytest.fixture
async def tap_of(state_dir: Path) -> AsyncIterator[list[SocketTransport]]:
    """Connections to the solo node's socket, closed at teardown."""
    opened: list[SocketTransport] = []
    yield opened
    for transport in opened:
        await transport.aclose()


async def tap_node(node: NodeProcess, opened: list[SocketTransport], *patterns: str) -> Tap:
    node.wait_for_log("msg=\"node ")
    transport = SocketTransport(node.state_dir / "bus.sock")
    await transport.start()
    opened.append(transport)
    return await Tap.on(transport, *patterns)


async def test_pattern_and_clip_frames_reach_the_bus_with_blobs_that_hold(
    state_dir: Path, tmp_path: Path, tap_of: list[SocketTransport]
) -> None:
    clip = make_clip(tmp_path / "clip.mp4", seconds=2.0, size=(320, 240), fps=25, gop=10)
    node = start_node(state_dir, NODE, THATDAM_SERVICES="capture,indexer", THATDAM_CAPTURE_FPS="5",
                      THATDAM_SOURCES="pattern=test://testsrc2?size=640x360&rate=30",
                      THATDAM_CLUSTER_KEY="frames test cluster key")
    try:
        tap = await tap_node(node, tap_of, "frame.#", "capture.#")
        pattern = f"frame.{NODE}.pattern.ready"
        await tap.wait(lambda: len(tap.keyed(pattern)) >= 3, "3 frames of the synthetic pattern")

        # The clip is started by a signed intent, so the tap is listening before its first frame.
        result = await publish_cli(state_dir, "intent.capture.start",
                                   {"node_id": NODE, "device": "clip", "source": str(clip.path), "fps": 5})
        assert result.code == 0, (result.stdout, result.stderr)
        assert f"done by {NODE}" in result.stdout
        await tap.wait(lambda: bool(tap.keyed(f"capture.{NODE}.clip.stopped")), "the clip's end")
        [stopped] = tap.keyed(f"capture.{NODE}.clip.stopped")
        assert stopped.data["reason"] == "end of file"
        clip_frames = [s.frame() for s in tap.keyed(f"frame.{NODE}.clip.ready")]
        assert [f.seq for f in clip_frames] == list(range(10))  # 2 s of clip at 5 per second

        frames = clip_frames + [s.frame() for s in tap.keyed(pattern)[:3]]
        for frame in frames:
            check_blob(frame)  # exists, sha256 and size match, decodes as a JPEG of the announced size
        assert {f.width for f in frames} == {320}
        readies = tap.matching(lambda key: key.startswith("frame.") and key.endswith(".ready"))
        assert {s.event["type"] for s in readies} == {"thatdam.frame.ready.v1"}

        ids = {s.event["id"] for s in readies}
        catalogue = state_dir / "index.sqlite"
        await tap.wait(lambda: ids <= set(catalogue_ids(catalogue)), "every tapped frame indexed")
        assert len(catalogue_ids(catalogue)) == len(set(catalogue_ids(catalogue)))

        def announced() -> list[str]:
            return [s.data["frame_event_id"] for s in tap.matching(lambda key: key.endswith(".indexed"))]

        await tap.wait(lambda: ids <= set(announced()), "every indexed frame announced")
        assert len(announced()) == len(set(announced())), "each frame announced once"
    finally:
        assert node.stop() == 0
    assert "Traceback" not in node.log()


async def test_failing_sources_are_retried_with_growing_backoff_and_the_node_keeps_beating(
    state_dir: Path, tmp_path: Path, tap_of: list[SocketTransport]
) -> None:
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(random.Random(3).randbytes(64 * 1024))
    node = start_node(state_dir, NODE, THATDAM_SERVICES="capture", THATDAM_HEARTBEAT_INTERVAL="0.5",
                      THATDAM_SOURCES=f"missing=/dev/video99,broken={corrupt}",
                      THATDAM_CAPTURE_RETRY_S="0.2", THATDAM_CAPTURE_RETRY_MAX_S="10")
    try:
        tap = await tap_node(node, tap_of, "capture.#", "node.*.heartbeat")
        failed = {device: f"capture.{NODE}.{device}.failed" for device in ("missing", "broken")}
        await tap.wait(lambda: all(len(tap.keyed(key)) >= 3 for key in failed.values()),
                       "3 failures of each source")
        beats = len(tap.keyed(f"node.{NODE}.heartbeat"))
        await tap.wait(lambda: len(tap.keyed(f"node.{NODE}.heartbeat")) >= beats + 2, "heartbeats go on")
        assert node.proc.poll() is None

        for device, needle in (("missing", "No such file"), ("broken", str(corrupt))):
            events = [s.data for s in tap.keyed(failed[device])]
            assert all(needle in e["reason"] for e in events), events
            attempts = [e["attempt"] for e in events]
            assert attempts == list(range(attempts[0], attempts[0] + len(events)))
            delays = [e["retry_in_s"] for e in events]
            assert all(a < b for a, b in itertools.pairwise(delays)), delays  # below the 10 s cap: growing
        assert not tap.keyed(f"capture.{NODE}.missing.started")
    finally:
        assert node.stop() == 0
    assert "Traceback" not in node.log()
