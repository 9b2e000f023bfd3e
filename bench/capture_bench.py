"""Capture bench: what the frame pipeline costs on this machine, through the bus, against bare PyAV.

    .venv/bin/python bench/capture_bench.py [--size 1280x720] [--rate 30] [--fps 30] [--seconds 20] [--dir DIR]

Three runs over the same synthetic source (lavfi ``testsrc2``), each printed with its figures:

1. baseline: bare PyAV, no bus: generate/decode frames and encode each as a JPEG thumbnail (``JpegEncoder``),
   as fast as possible. Its CPU per frame is the floor the pipeline is compared with.
2. paced: the capture and indexer services in one process on the embedded broker, the source paced to real
   time like a camera. Sustained frames indexed per second, CPU per frame (process CPU time of every thread,
   including the source), frames dropped because the pipeline lagged, and capture-to-indexed latency p50/p99
   (``captured_at`` of the frame to the catalogue's ``indexed_at``).
3. unpaced: the same services with the source as fast as it goes: the pipeline's capacity on this machine
   (a live source drops the frames the pipeline cannot take, so this is throughput, not a backlog; its
   latency is mostly the time a frame waits in the source's hand-off buffer).

The ratio printed is CPU per indexed frame through the bus / CPU per frame of the baseline. The blob store and
the catalogue live in a temporary directory under ``--dir`` (default: the system's temp directory), because
creating a file per frame costs very different CPU on ext4 and on tmpfs.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import av
from common import machine

from handlers import capture, indexer
from thatdam_bus import Role, load_settings
from thatdam_bus.frames import JpegEncoder
from thatdam_bus.node.services import HandlerHost
from thatdam_bus.publisher import Bus
from thatdam_bus.transports.embedded import EmbeddedTransport

WARMUP_FRAMES = 30


@dataclass
class Figures:
    name: str
    frames: int
    seconds: float
    cpu_s: float
    dropped: int = 0
    latencies_ms: tuple[float, ...] = ()

    @property
    def per_second(self) -> float:
        return self.frames / self.seconds

    @property
    def cpu_ms_per_frame(self) -> float:
        return 1000 * self.cpu_s / max(self.frames, 1)

    def line(self) -> str:
        text = (f"{self.name:9} {self.frames:6d} frames in {self.seconds:5.1f} s = {self.per_second:6.1f}/s, "
                f"CPU {self.cpu_ms_per_frame:5.2f} ms/frame ({100 * self.cpu_s / self.seconds:4.0f}% of one core)")
        if self.latencies_ms:
            p50, p99 = percentile(self.latencies_ms, 50), percentile(self.latencies_ms, 99)
            text += f", dropped {self.dropped}, capture->indexed p50 {p50:.1f} ms p99 {p99:.1f} ms"
        return text


def percentile(values: tuple[float, ...], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def baseline(size: str, rate: float, width: int, count: int) -> Figures:
    """Bare PyAV: the same frames generated and encoded, nothing else."""
    encoder = JpegEncoder(width)
    with av.open(f"testsrc2=size={size}:rate={rate:g}", format="lavfi") as container:
        frames = container.decode(video=0)
        for _ in range(WARMUP_FRAMES):
            encoder.encode(next(frames))
        cpu, began = time.process_time(), time.monotonic()
        for _ in range(count):
            encoder.encode(next(frames))
        return Figures("baseline", count, time.monotonic() - began, time.process_time() - cpu)


async def through_the_bus(name: str, source: str, fps: float | None, width: int, seconds: float,
                          directory: str | None) -> Figures:
    """Capture + indexer on the embedded broker for ``seconds`` after a warm-up; figures from the catalogue."""
    with tempfile.TemporaryDirectory(prefix="capture-bench-", dir=directory) as tmp:
        settings = load_settings(state_dir=Path(tmp), sources=(f"cam0={source}",), capture_fps=fps,
                                 thumbnail_width=width, blob_max_count=1_000_000, blob_max_bytes=1 << 40)
        async with EmbeddedTransport(prefix="bench") as transport:
            host = HandlerHost(Bus(transport, cluster="bench", node_id="bench"), [capture.service, indexer.service],
                               max_bytes=1 << 20, settings=settings)
            catalogue: indexer.Catalogue = host.state_of("indexer")
            manager: capture.CaptureManager = host.state_of("capture")
            await host.apply_role(Role.SOLO)
            try:
                async with asyncio.timeout(30):
                    while catalogue.added < WARMUP_FRAMES:
                        await asyncio.sleep(0.05)
                rows, cpu, began = catalogue.added, time.process_time(), time.monotonic()
                dropped = manager.loops["cam0"].stats.reader.dropped
                window_start = datetime.now().astimezone()
                await asyncio.sleep(seconds)  # the measurement window
                figures = Figures(name, catalogue.added - rows, time.monotonic() - began,
                                  time.process_time() - cpu, manager.loops["cam0"].stats.reader.dropped - dropped)
            finally:
                await host.stop_all()
                catalogue.close()
        figures.latencies_ms = latencies(Path(tmp) / indexer.CATALOGUE_FILE, window_start)
        return figures


def latencies(path: Path, since: datetime) -> tuple[float, ...]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT captured_at, indexed_at FROM frames").fetchall()
    spans = []
    for captured, indexed in rows:
        captured_at, indexed_at = datetime.fromisoformat(captured), datetime.fromisoformat(indexed)
        if captured_at >= since:
            spans.append((indexed_at - captured_at).total_seconds() * 1000)
    return tuple(spans)


async def main(args: argparse.Namespace) -> None:
    source = f"test://testsrc2?size={args.size}&rate={args.rate:g}"
    print(f"machine: {machine()}, PyAV {av.__version__} (FFmpeg {av.ffmpeg_version_info})")
    print(f"state: {args.dir or tempfile.gettempdir()}")
    print(f"input: {args.size} at {args.rate:g} fps, sampled at {args.fps:g} fps, JPEG {args.width} px wide")
    base = await asyncio.to_thread(baseline, args.size, args.rate, args.width, int(args.rate * args.seconds))
    print(base.line())
    paced = await through_the_bus("paced", source, args.fps, args.width, args.seconds, args.dir)
    print(paced.line())
    # Keyframes only: every lavfi frame is a keyframe, so every frame the pipeline can take is sampled.
    unpaced = await through_the_bus("unpaced", f"{source}&realtime=0", None, args.width, args.seconds, args.dir)
    print(unpaced.line())
    for run in (paced, unpaced):
        print(f"ratio {run.name}: {run.cpu_ms_per_frame / base.cpu_ms_per_frame:.2f}x the baseline's CPU per frame")
    print(f"paced run: {paced.per_second / args.fps:.1%} of the sampling rate sustained, {paced.dropped} dropped")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--rate", type=float, default=30.0, help="source frames per second")
    parser.add_argument("--fps", type=float, default=30.0, help="frames sampled per second")
    parser.add_argument("--width", type=int, default=320, help="thumbnail width")
    parser.add_argument("--seconds", type=float, default=20.0, help="measurement window per run")
    parser.add_argument("--dir", default=None, help="where the blob store and catalogue go (e.g. /dev/shm)")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
