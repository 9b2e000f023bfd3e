"""Frames row: a 720p30 H.264 file through the capture pipeline against PyAV decoding the same file alone.

    .venv/bin/python bench/frames_bench.py [--seconds 20] [--rounds 3] [--paced-seconds 15] [--dir DIR]

The input is made first with PyAV: ``testsrc2`` 1280x720 at 30 fps, ``--seconds`` long, libx264 (``veryfast``,
no B-frames, GOP 30, no scene-cut keyframes: one keyframe a second, like a camera) in an mp4.

Throughput, rounds interleaved (``common.interleave``), each variant's figure the median over the rounds:
- ``decode`` (baseline): PyAV decodes every frame of the file (``container.decode``, the codec defaults the
  pipeline uses too), nothing else;
- ``fps5``: the real capture service and indexer in one process on the embedded broker (``HandlerHost``, role
  solo, ``THATDAM_SOURCES=cam0=<file>``, ``THATDAM_CAPTURE_FPS=5``, 320 px JPEGs): decode every frame, keep 5
  per second of presentation time, JPEG, blob store, durable ``frame.*.*.ready`` published, indexer verifies and
  commits to ``index.sqlite``;
- ``keyframes``: the same with ``THATDAM_CAPTURE_FPS`` unset (keyframes only: the decoder skips non-key frames).
Rate = frames of the file / seconds from starting the services to the last frame indexed (the file is read as
fast as the pipeline takes it: a file applies back-pressure, nothing is dropped). Target: >= 0.7x ``decode``.

Latency: the capture pipeline paced like a camera at 30 fps (``test://testsrc2`` 1280x720 at 30 fps in real
time, every frame sampled: 30 JPEGs/s, the heaviest setting of this row) for ``--paced-seconds``; p99 of each
frame's ``captured_at`` -> the catalogue's ``indexed_at`` (``capture_bench.through_the_bus``). Target <= 100 ms
(baseline column: the budget; ratio = p99 / 100 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from capture_bench import through_the_bus
from common import Row, command_line, interleave, medians, percentile, quantiles
from nodes import finish

from handlers import capture, indexer
from thatdam_bus import Role, load_settings
from thatdam_bus.node.services import HandlerHost
from thatdam_bus.publisher import Bus
from thatdam_bus.transports.embedded import EmbeddedTransport

SIZE, RATE, GOP = (1280, 720), 30, 30
TARGET_RATIO = 0.7
LATENCY_BUDGET_MS = 100.0


def make_input(path: Path, seconds: float) -> int:
    """Encode the H.264 test input; returns its frame count."""
    total = round(seconds * RATE)
    with av.open(str(path), "w") as out, av.open(f"testsrc2=size={SIZE[0]}x{SIZE[1]}:rate={RATE}",
                                                 format="lavfi") as src:
        stream = out.add_stream("libx264", rate=RATE)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt, stream.gop_size = *SIZE, "yuv420p", GOP
        stream.codec_context.options = {"preset": "veryfast", "sc_threshold": "0", "bf": "0"}
        for index, frame in enumerate(src.decode(video=0)):
            if index >= total:
                break
            frame.pts, frame.time_base = index, Fraction(1, RATE)
            frame.pict_type = av.video.frame.PictureType.NONE  # lavfi marks every frame I; let the GOP decide
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return total


def decode_alone(path: Path) -> dict[str, Any]:
    """The baseline: every frame decoded, nothing else (blocking: run in a thread)."""
    began, cpu = time.monotonic(), time.process_time()
    with av.open(str(path)) as container:
        frames = sum(1 for _ in container.decode(container.streams.video[0]))
    elapsed = time.monotonic() - began
    return {"rate": frames / elapsed, "frames": frames, "seconds": elapsed,
            "cpu_ms_per_frame": 1000 * (time.process_time() - cpu) / frames}


async def pipeline(path: Path, frames: int, fps: float | None, directory: str | None) -> dict[str, Any]:
    """Capture + indexer on the embedded broker over the whole file; rate in frames of the file per second."""
    with tempfile.TemporaryDirectory(prefix="bench-frames-", dir=directory) as tmp:
        settings = load_settings(state_dir=Path(tmp), sources=(f"cam0={path}",), capture_fps=fps,
                                 thumbnail_width=320, blob_max_count=1_000_000, blob_max_bytes=1 << 40)
        async with EmbeddedTransport(prefix="bench-frames") as transport:
            host = HandlerHost(Bus(transport, cluster="bench", node_id="bench"), [capture.service, indexer.service],
                               max_bytes=1 << 20, settings=settings)
            catalogue: indexer.Catalogue = host.state_of("indexer")
            manager: capture.CaptureManager = host.state_of("capture")
            began, cpu = time.monotonic(), time.process_time()
            try:
                await host.apply_role(Role.SOLO)
                loop = await wait_for(lambda: manager.loops.get("cam0"), 30)
                await wait_for(lambda: "cam0" not in manager.loops and catalogue.added >= loop.stats.published, 120)
                elapsed = time.monotonic() - began
                figures = {"rate": frames / elapsed, "seconds": elapsed, "indexed": catalogue.added,
                           "decoded": loop.stats.reader.decoded, "published": loop.stats.published,
                           "cpu_ms_per_source_frame": 1000 * (time.process_time() - cpu) / frames}
            finally:
                await host.stop_all()
                catalogue.close()
    if figures["published"] != figures["indexed"] or not figures["indexed"]:
        raise RuntimeError(f"pipeline lost frames: {figures}")
    return figures


async def wait_for(probe: Any, timeout: float) -> Any:
    """Poll ``probe()`` every 5 ms until it returns something truthy (returned), within ``timeout``."""
    async with asyncio.timeout(timeout):
        while not (value := probe()):
            await asyncio.sleep(0.005)
        return value


async def main(args: argparse.Namespace) -> list[Row]:
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-frames-input-", dir=args.dir) as tmp:
        path = Path(tmp) / "720p30.mp4"
        frames = await asyncio.to_thread(make_input, path, args.seconds)
        print(f"input: {path.name}, {frames} frames 1280x720 H.264 GOP {GOP}, {path.stat().st_size:,} bytes",
              flush=True)

        async def decode() -> dict[str, Any]:
            return await asyncio.to_thread(decode_alone, path)

        runs = await interleave({
            "decode": decode,
            "fps5": lambda: pipeline(path, frames, 5.0, args.dir),
            "keyframes": lambda: pipeline(path, frames, None, args.dir),
        }, args.rounds, show="rate,seconds")
    source = f"test://testsrc2?size={SIZE[0]}x{SIZE[1]}&rate={RATE}"
    paced = await through_the_bus("paced", source, float(RATE), 320, args.paced_seconds, args.dir)
    print(paced.line(), flush=True)
    return [finish(row) for row in rows_of(args, runs, paced.latencies_ms, paced.dropped, load_before)]


def rows_of(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]], latencies: tuple[float, ...],
            dropped: int, load_before: tuple[float, ...]) -> list[Row]:
    base = medians(runs["decode"])
    extra: dict[str, Any] = {"input": f"{SIZE[0]}x{SIZE[1]} {RATE} fps H.264 GOP {GOP}, {args.seconds:g} s",
                             "decode_medians": base, "load_average_before": load_before,
                             "load_average_after": os.getloadavg()}
    rows = []
    for name, label in (("fps5", "5 fps sampling"), ("keyframes", "keyframes only")):
        ours = medians(runs[name])
        rows.append(Row(f"frames_{name}", f"Frames: 720p30 H.264 file, {label}, JPEG 320 px, indexed",
                        command_line(), "frames of the input per second", "frames/s", base["rate"], ours["rate"],
                        f">= {TARGET_RATIO}x", ours["rate"] >= TARGET_RATIO * base["rate"], args.rounds,
                        extra={**extra, "ours_medians": ours}, runs={"decode": runs["decode"], name: runs[name]}))
    p99 = percentile(latencies, 99)
    latency_run = {"p50_ms": percentile(latencies, 50), "p99_ms": p99, "frames": len(latencies),
                   "dropped": dropped, "quantiles_ms": quantiles(latencies)}
    rows.append(Row("frames_latency", "Frames: capture -> indexed at 30 fps (720p, every frame), p99",
                    command_line(), "p99 capture -> indexed", "ms", LATENCY_BUDGET_MS, p99,
                    "<= 1x, i.e. p99 <= 100 ms", p99 <= LATENCY_BUDGET_MS and len(latencies) > 0, 1,
                    extra={**extra, **{k: v for k, v in latency_run.items() if k != "quantiles_ms"}},
                    runs={"paced": [latency_run]}))
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the H.264 input")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--paced-seconds", type=float, default=15.0, help="latency window at 30 fps")
    parser.add_argument("--dir", default=None, help="where the input, blob store and catalogue go")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
