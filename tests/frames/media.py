"""Real media for the frame tests, made with PyAV on the spot (no fixtures checked in, no network)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from urllib.parse import unquote, urlsplit

import av

from thatdam_bus.events import FrameReady


@dataclass(frozen=True)
class Clip:
    path: Path
    frames: int
    keyframes: int
    width: int
    height: int
    fps: int
    time_base: Fraction


def make_clip(path: Path, *, seconds: float = 2.0, size: tuple[int, int] = (320, 240), fps: int = 25,
              gop: int = 10) -> Clip:
    """Encode a test-pattern clip (H.264, or MPEG-4 part 2 when libx264 is absent) with a fixed GOP."""
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    width, height = size
    total = round(seconds * fps)
    with av.open(str(path), "w") as out, av.open(f"testsrc2=size={width}x{height}:rate={fps}",
                                                 format="lavfi") as src:
        stream = out.add_stream(codec, rate=fps)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.gop_size = gop
        stream.codec_context.options = {"sc_threshold": "0"} if codec == "libx264" else {}
        for index, frame in enumerate(src.decode(video=0)):
            if index >= total:
                break
            frame.pts, frame.time_base = index, Fraction(1, fps)
            frame.pict_type = av.video.frame.PictureType.NONE  # lavfi marks every frame I; let the GOP decide
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    frames, keyframes, time_base = probe(path)
    return Clip(path, frames, keyframes, width, height, fps, time_base)


def probe(path: Path) -> tuple[int, int, Fraction]:
    """(frames, keyframes, time base) as the decoder sees them: what keyframe sampling must reproduce."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        flags = [frame.key_frame for frame in container.decode(stream)]
        assert stream.time_base is not None
        return len(flags), sum(flags), stream.time_base


def blob_path(event: FrameReady) -> Path:
    parts = urlsplit(event.uri)
    assert parts.scheme == "file", event.uri
    return Path(unquote(parts.path))


def check_blob(event: FrameReady) -> av.VideoFrame:
    """The claim check holds: the file exists, matches sha256 and size, and decodes as a JPEG of that size."""
    path = blob_path(event)
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == event.sha256 == path.stem
    assert len(data) == event.size_bytes
    assert data[:2] == b"\xff\xd8", "not a JPEG (no SOI marker)"
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "mjpeg"
        frame = next(container.decode(video=0))
    assert (frame.width, frame.height) == (event.width, event.height)
    return frame
