"""The capture pipeline end to end on real media made by PyAV: clip -> frames -> JPEG blobs -> events."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.frames.media import Clip, check_blob, make_clip
from tests.support import wait_until
from thatdam_bus.events import CaptureFailed, CaptureStarted, CaptureStopped, FrameReady
from thatdam_bus.frames import (
    Backoff,
    BlobStore,
    CaptureConfig,
    CaptureLoop,
    FrameReader,
    Sampling,
    parse_source,
)

NODE = "node-a"


@dataclass
class Recorder:
    """The four callbacks of a capture loop, recording what they get."""

    frames: list[FrameReady] = field(default_factory=list)
    started: list[CaptureStarted] = field(default_factory=list)
    failed: list[CaptureFailed] = field(default_factory=list)
    stopped: list[CaptureStopped] = field(default_factory=list)

    async def on_frame(self, event: FrameReady) -> None:
        self.frames.append(event)

    async def on_started(self, event: CaptureStarted) -> None:
        self.started.append(event)

    async def on_failed(self, event: CaptureFailed) -> None:
        self.failed.append(event)

    async def on_stopped(self, event: CaptureStopped) -> None:
        self.stopped.append(event)

    def callbacks(self) -> dict[str, Any]:
        return {"on_frame": self.on_frame, "on_started": self.on_started, "on_failed": self.on_failed,
                "on_stopped": self.on_stopped}


class FastSleep:
    """Injected sleep: records the delays asked for and returns at once (yielding to the loop)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Clip:
    path = tmp_path_factory.mktemp("media") / "clip.mp4"
    return make_clip(path, seconds=2.0, size=(320, 240), fps=25, gop=10)


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


@contextlib.asynccontextmanager
async def running(loop: CaptureLoop) -> AsyncIterator[asyncio.Task[None]]:
    """Run the loop in a task group, as its owner would, and stop it by cancellation on the way out."""
    async with asyncio.TaskGroup() as group:
        task = group.create_task(loop.run())
        try:
            yield task
        finally:
            task.cancel()


async def capture_file(clip: Clip, store: BlobStore, sampling: Sampling, width: int = 160) -> Recorder:
    rec = Recorder()
    config = CaptureConfig(NODE, "/dev/video0", str(clip.path), sampling, width=width)
    async with asyncio.timeout(30):
        await CaptureLoop(config, store, **rec.callbacks()).run()
    return rec


def check_frames(rec: Recorder, width: int) -> None:
    assert [e.seq for e in rec.frames] == list(range(len(rec.frames)))
    pts = [e.pts for e in rec.frames if e.pts is not None]
    assert len(pts) == len(rec.frames) and pts == sorted(pts)
    for event in rec.frames:
        assert (event.node_id, event.device) == (NODE, "dev_video0")
        assert event.width == width and event.width % 2 == 0 and event.height % 2 == 0
        check_blob(event)


async def test_keyframes_only_yields_one_event_per_keyframe(clip: Clip, store: BlobStore) -> None:
    rec = await capture_file(clip, store, Sampling.keyframes())
    assert clip.keyframes == 5 and clip.frames == 50
    assert len(rec.frames) == clip.keyframes
    assert all(e.keyframe for e in rec.frames)
    check_frames(rec, width=160)
    assert [e.height for e in rec.frames] == [120] * clip.keyframes  # 320x240 -> 160x120: aspect kept
    assert [s.source for s in rec.started] == [str(clip.path)]
    assert [s.reason for s in rec.stopped] == ["end of file"] and rec.failed == []


async def test_fps_sampling_counts_presentation_time_not_wall_clock(clip: Clip, store: BlobStore) -> None:
    rec = await capture_file(clip, store, Sampling.per_second(5), width=100)
    assert len(rec.frames) == 10  # 2 s at 5 per second, however fast the file decodes
    check_frames(rec, width=100)
    seconds = [float(e.pts * clip.time_base) for e in rec.frames if e.pts is not None]
    assert all(0.19 < b - a < 0.21 for a, b in itertools.pairwise(seconds))
    assert len(store) == len({e.sha256 for e in rec.frames})


async def test_a_thumbnail_never_upscales(clip: Clip, store: BlobStore) -> None:
    rec = await capture_file(clip, store, Sampling.keyframes(), width=1000)
    check_frames(rec, width=320)


async def test_looping_a_file_keeps_going_and_seq_keeps_counting(clip: Clip, store: BlobStore) -> None:
    rec = Recorder()
    config = CaptureConfig(NODE, "clip", str(clip.path), Sampling.keyframes(), width=64, loop=True)
    async with running(CaptureLoop(config, store, **rec.callbacks())):
        await wait_until(lambda: len(rec.frames) >= 3 * clip.keyframes, what="three passes over the clip")
    assert [e.seq for e in rec.frames[:15]] == list(range(15))
    assert len(rec.started) >= 3 and rec.failed == []
    assert [s.reason for s in rec.stopped] == ["requested"]


async def test_synthetic_source_runs_at_its_rate(store: BlobStore) -> None:
    spec = parse_source("test://testsrc2?size=320x240&rate=30")
    arrivals: list[float] = []
    async with FrameReader(spec, lambda _frame: True) as reader:
        while len(arrivals) < 16:
            async with asyncio.timeout(5):
                frame = await reader.get()
            assert frame is not None and (frame.width, frame.height) == (320, 240)
            arrivals.append(time.monotonic())
    elapsed = arrivals[-1] - arrivals[0]
    assert 0.4 < elapsed < 1.5, f"15 frame intervals at 30 fps took {elapsed:.3f} s"


@pytest.mark.parametrize("source", ["test://bars?size=640x360&rate=30",
                                    "test://pattern?size=96x54&rate=50&engine=python"])
async def test_synthetic_source_makes_jpegs_that_decode(source: str, store: BlobStore) -> None:
    rec = Recorder()
    config = CaptureConfig(NODE, source.split("?")[0], source, Sampling.per_second(10), width=64)
    async with running(CaptureLoop(config, store, **rec.callbacks())):
        await wait_until(lambda: len(rec.frames) >= 4, what="4 frames from the pattern")
    for event in rec.frames[:4]:
        assert event.device in {"test_bars", "test_pattern"}
        check_blob(event)


async def assert_retries_until_cancelled(source: str, store: BlobStore, reason_has: str) -> Recorder:
    rec, sleep = Recorder(), FastSleep()
    config = CaptureConfig(NODE, "cam", source, backoff=Backoff(base_s=0.1, cap_s=1.0, jitter=0.2),
                           timeout_s=1.0)
    loop = CaptureLoop(config, store, sleep=sleep, **rec.callbacks())
    async with running(loop) as task:
        await wait_until(lambda: len(rec.failed) >= 8, what="8 failed attempts")
        assert not task.done()
    assert [f.attempt for f in rec.failed[:8]] == list(range(1, 9))
    delays = [f.retry_in_s or 0.0 for f in rec.failed]
    assert delays[: len(sleep.delays)] == sleep.delays
    assert all(a < b for a, b in itertools.pairwise(delays[:5])), delays  # 0.1 0.2 0.4 0.8 1.0
    assert all(0.8 <= d <= 1.0 for d in delays[4:8]), delays  # capped, jitter only shortens
    assert all(reason_has in f.reason and f.source == source for f in rec.failed)
    assert rec.started == [] and rec.frames == []
    assert [s.reason for s in rec.stopped] == ["requested"]
    return rec


async def test_missing_device_is_retried_with_capped_backoff(store: BlobStore) -> None:
    await assert_retries_until_cancelled("/dev/video99", store, "No such file")


async def test_corrupt_file_is_retried_with_capped_backoff(tmp_path: Path, store: BlobStore) -> None:
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(random.Random(7).randbytes(64 * 1024))
    await assert_retries_until_cancelled(str(path), store, str(path))


async def test_a_silent_stream_times_out(store: BlobStore) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.read()  # accept, never answer
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        rec = Recorder()
        config = CaptureConfig(NODE, "cam", f"rtsp://127.0.0.1:{port}/live", timeout_s=0.5)
        async with running(CaptureLoop(config, store, sleep=FastSleep(), **rec.callbacks())):
            await wait_until(lambda: len(rec.failed) >= 2, timeout=15, what="2 timeouts")
    assert "timeout" in rec.failed[0].reason, rec.failed[0].reason


async def test_a_failing_frame_callback_does_not_stop_capture(clip: Clip, store: BlobStore) -> None:
    seen: list[FrameReady] = []

    async def flaky(event: FrameReady) -> None:
        seen.append(event)
        if event.seq % 2 == 0:
            raise RuntimeError("broker down")

    loop = CaptureLoop(CaptureConfig(NODE, "clip", str(clip.path), Sampling.keyframes(), width=64),
                       store, on_frame=flaky)
    async with asyncio.timeout(30):
        await loop.run()
    assert [e.seq for e in seen] == list(range(clip.keyframes))
    assert loop.stats.callback_errors == 3 and loop.stats.published == 2


async def test_cancel_while_capturing_a_live_source_emits_stopped(store: BlobStore) -> None:
    rec = Recorder()
    config = CaptureConfig(NODE, "cam", "test://testsrc2?size=320x240&rate=30", Sampling.per_second(30))
    loop = CaptureLoop(config, store, **rec.callbacks())
    async with running(loop) as task:
        await wait_until(lambda: len(rec.frames) >= 2, what="2 frames")
    assert task.cancelled()
    assert [s.reason for s in rec.stopped] == ["requested"]
    assert "stopped" in repr(loop)


async def test_a_sent_frame_keeps_its_blob_pinned_and_an_unsent_one_is_unpinned(clip: Clip, store: BlobStore) -> None:
    """Pinned blobs wait for whoever processes their ``FrameReady``; only a frame that was never sent lets go."""
    sent: list[FrameReady] = []
    unsent: list[FrameReady] = []

    async def every_other(event: FrameReady) -> None:
        if event.seq % 2:
            unsent.append(event)
            raise RuntimeError("broker down")
        sent.append(event)

    config = CaptureConfig(NODE, "clip", str(clip.path), Sampling.keyframes(), width=64, pin_frames=True)
    async with asyncio.timeout(30):
        await CaptureLoop(config, store, on_frame=every_other).run()
    assert [e.seq for e in sent] == [0, 2, 4] and [e.seq for e in unsent] == [1, 3]
    assert all(store.is_pinned(e.sha256) for e in sent)
    assert not any(store.is_pinned(e.sha256) for e in unsent if e.sha256 not in {s.sha256 for s in sent})


async def test_a_stop_during_a_publish_finishes_and_counts_that_frame(store: BlobStore) -> None:
    """Cancelled while the frame callback is still publishing: the frame in hand is finished and counted
    before the loop ends, so the node's published count is what the broker got."""
    begun, release = asyncio.Event(), asyncio.Event()
    finished: list[int] = []

    async def slow_publish(event: FrameReady) -> None:
        begun.set()
        await release.wait()
        finished.append(event.seq)

    config = CaptureConfig(NODE, "cam", "test://testsrc2?size=160x120&rate=30", Sampling.per_second(30))
    loop = CaptureLoop(config, store, on_frame=slow_publish)
    async with asyncio.timeout(30), asyncio.TaskGroup() as group:
        task = group.create_task(loop.run())
        await begun.wait()
        task.cancel()
        await asyncio.sleep(0)  # the cancellation reaches the loop while the publish is still waiting
        release.set()
    assert task.cancelled()
    assert finished == [0] and loop.stats.published == 1


async def test_a_live_source_reports_each_drop_as_it_happens() -> None:
    """Nobody takes frames: a live source keeps the newest and drops the rest, each one reported on the decode
    thread at once (what ``thatdam_frames_dropped_total`` counts, even while nothing is published)."""
    spec = parse_source("test://testsrc2?size=96x54&rate=50")
    drops: list[int] = []
    async with FrameReader(spec, lambda _frame: True, maxsize=1, on_drop=lambda: drops.append(1)) as reader:
        await wait_until(lambda: len(drops) >= 5, what="5 frames dropped while nobody takes them")
    assert len(drops) == reader.stats.dropped >= 5
