"""The proxy relays each camera's newest frame, at most once per interval, and never holds the latest back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from handlers import proxy
from tests.frames_bus.support import Tap
from thatdam_bus import FrameReady, Role, load_settings
from thatdam_bus.node.services import HandlerHost
from thatdam_bus.publisher import Bus
from thatdam_bus.transports.embedded import EmbeddedTransport

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def frame(seq: int, device: str = "cam0", at: float | None = None) -> FrameReady:
    return FrameReady(node_id="cam-node", device=device, seq=seq, keyframe=True, width=64, height=36,
                      captured_at=T0 + timedelta(seconds=seq if at is None else at), uri=f"file:///b/{seq}.jpg",
                      sha256=f"{seq:064x}", size_bytes=100)


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_first_frame_goes_at_once_and_the_rest_are_coalesced_to_the_newest() -> None:
    clock = Clock()
    frames = proxy.LatestFrames(1.0, clock)
    assert frames.remember("e0", frame(0)) is True
    assert frames.take("cam-node", "cam0", "px").skipped == 0
    assert [frames.remember(f"e{n}", frame(n)) for n in (1, 2, 3)] == [False, False, False]
    assert frames.due() == []
    clock.now += 1.0
    assert frames.due() == [("cam-node", "cam0")]
    latest = frames.take("cam-node", "cam0", "px")
    assert (latest.seq, latest.frame_event_id, latest.skipped, latest.relayed_by) == (3, "e3", 2, "px")
    assert frames.due() == [], "nothing new: nothing to relay"
    clock.now += 5.0
    assert frames.remember("e4", frame(4)) is True, "a slow camera is relayed without waiting"


def test_a_late_older_frame_never_replaces_a_newer_one() -> None:
    frames = proxy.LatestFrames(1.0, Clock())
    frames.remember("new", frame(5))
    assert frames.remember("old", frame(4)) is False
    latest = frames.latest("cam-node", "cam0")
    assert latest is not None and latest.seq == 5
    frames.remember("restart", frame(0, at=10.0))  # a restarted capture counts seq from 0 again: time decides
    latest = frames.latest("cam-node", "cam0")
    assert latest is not None and latest.seq == 0


async def test_a_proxy_node_relays_latest_frames_on_the_bus(tmp_path: Path) -> None:
    async with EmbeddedTransport(prefix="t") as transport:
        tap = await Tap.on(transport, "frame.*.*.latest")
        bus = Bus(transport, cluster="test", node_id="px")
        host = HandlerHost(bus, [proxy.service], max_bytes=65536,
                           settings=load_settings(state_dir=tmp_path, proxy_interval=0.2))
        await host.apply_role(Role.PROXY)
        try:
            for seq in range(5):
                await bus.publish(frame(seq), "frame.cam-node.cam0.ready")
            await bus.publish(frame(0, device="cam1"), "frame.cam-node.cam1.ready")
            await tap.wait(lambda: len(tap.keyed("frame.cam-node.cam0.latest")) >= 2, "the coalesced relay")
            await tap.wait(lambda: len(tap.keyed("frame.cam-node.cam1.latest")) == 1, "the other camera")
        finally:
            await host.stop_all()
    first, second = (s.data for s in tap.keyed("frame.cam-node.cam0.latest")[:2])
    assert (first["seq"], first["skipped"]) == (0, 0)
    assert (second["seq"], second["skipped"], second["relayed_by"]) == (4, 3, "px")
    assert tap.keyed("frame.cam-node.cam0.latest")[0].event["type"] == "thatdam.frame.latest.v1"
