"""Video sources, opened with PyAV: a V4L2 device, a file, a network stream, or a synthetic test pattern.

Source text accepted by ``parse_source`` (the ``source`` of ``CaptureStartIntent``):

- ``/dev/video0`` (or any ``/dev/v4l/...`` path): a V4L2 device, demuxer ``v4l2``;
- ``rtsp://``, ``rtsps://``, ``http(s)://``, ``rtmp://``, ``srt://``, ``udp://``, ``tcp://``: a live stream,
  with an open/read timeout so a silent camera becomes an error instead of a hung thread;
- ``test://<pattern>?size=1280x720&rate=30``: a synthetic pattern (lavfi ``testsrc2``, ``smptebars`` ...),
  paced to real time like a camera, so real frames exist on any machine (``realtime=0`` unpaced,
  ``engine=python`` builds frames in Python for PyAV builds without lavfi);
- anything else (or ``file://``): a file path.

Decoding blocks, so it never runs on the event loop: ``reader.FrameReader`` owns one thread per source and
hands frames over. This module is the blocking half: parse, open, iterate, pace.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from fractions import Fraction
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import av

from thatdam_bus.errors import ConfigError, ThatdamError

DEFAULT_TIMEOUT_S = 10.0
NETWORK_SCHEMES = frozenset({"rtsp", "rtsps", "http", "https", "rtmp", "srt", "udp", "tcp"})
TEST_PATTERNS = frozenset({"testsrc", "testsrc2", "smptebars", "smptehdbars", "rgbtestsrc", "yuvtestsrc",
                           "pal75bars", "pal100bars", "mandelbrot"})
_PATTERN_ALIASES = {"": "testsrc2", "default": "testsrc2", "pattern": "testsrc2", "bars": "smptebars"}
_MAX_REASON = 500


class SourceError(ThatdamError):
    """A source could not be opened or stopped producing frames; the message is one line for CaptureFailed."""


class SourceKind(StrEnum):
    DEVICE = "device"
    FILE = "file"
    URL = "url"
    TEST = "test"


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """A parsed source. ``live`` sources drop frames when the consumer lags; files apply backpressure."""

    text: str
    kind: SourceKind
    target: str
    format: str | None = None
    options: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = DEFAULT_TIMEOUT_S
    realtime: bool = False
    size: tuple[int, int] = (1280, 720)
    rate: Fraction = Fraction(30)
    engine: str = "lavfi"

    @property
    def live(self) -> bool:
        return self.kind is not SourceKind.FILE


@dataclass(frozen=True, slots=True)
class DecodedFrame:
    """One decoded frame and what sampling and the event need to know about it."""

    frame: av.VideoFrame
    pts: int | None
    time_base: Fraction | None
    seconds: float
    """Presentation time: ``pts * time_base``, or index / rate when the source gives no pts."""
    keyframe: bool
    decoded_at: float
    """Wall clock (``time.time()``) when the frame left the decoder: the event's ``captured_at``."""

    @property
    def width(self) -> int:
        return self.frame.width

    @property
    def height(self) -> int:
        return self.frame.height


class OpenSource(Protocol):
    """An opened source: iterate its frames on one thread, then close it on that same thread."""

    def frames(self) -> Generator[DecodedFrame, None, None]: ...

    def close(self) -> None: ...


def parse_source(text: str, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 options: Mapping[str, str] | None = None) -> SourceSpec:
    """Classify ``text`` (see the module docstring); ``options`` go to the demuxer (e.g. ``video_size``)."""
    if not text.strip():
        raise ConfigError("empty capture source")
    opts = dict(options or {})
    scheme = urlsplit(text).scheme.lower()
    if scheme == "test":
        return _parse_test(text, timeout_s)
    if scheme in NETWORK_SCHEMES:
        if scheme.startswith("rtsp"):
            opts.setdefault("rtsp_transport", "tcp")  # UDP loses packets over Wi-Fi; frames then smear
        return SourceSpec(text, SourceKind.URL, text, options=opts, timeout_s=timeout_s)
    if text.startswith(("/dev/video", "/dev/v4l/")):
        return SourceSpec(text, SourceKind.DEVICE, text, format="v4l2", options=opts, timeout_s=timeout_s)
    path = unquote(urlsplit(text).path) if scheme == "file" else text
    return SourceSpec(text, SourceKind.FILE, path, options=opts, timeout_s=timeout_s)


def _parse_test(text: str, timeout_s: float) -> SourceSpec:
    parts = urlsplit(text)
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    name = _PATTERN_ALIASES.get(parts.netloc, parts.netloc)
    if name not in TEST_PATTERNS:
        raise ConfigError(f"unknown test pattern {parts.netloc!r} (use one of {sorted(TEST_PATTERNS)})")
    try:
        width, height = (int(side) for side in query.get("size", "1280x720").lower().split("x"))
        rate = Fraction(query.get("rate", "30"))
    except ValueError as exc:
        raise ConfigError(f"bad test source {text!r}: size is WxH, rate a number") from exc
    if not (16 <= width <= 7680 and 16 <= height <= 4320 and 0 < rate <= 240):
        raise ConfigError(f"bad test source {text!r}: size 16x16..7680x4320, rate in (0, 240]")
    engine = query.get("engine", "lavfi")
    if engine not in {"lavfi", "python"}:
        raise ConfigError(f"bad test source {text!r}: engine is lavfi or python")
    graph = f"{name}=size={width}x{height}:rate={rate}"
    return SourceSpec(text, SourceKind.TEST, graph, format="lavfi", timeout_s=timeout_s,
                      realtime=query.get("realtime", "1") not in {"0", "false", "no"},
                      size=(width, height), rate=rate, engine=engine)


def open_source(spec: SourceSpec, *, keyframes_only: bool = False) -> OpenSource:
    """Open ``spec`` (blocking). Raises ``SourceError`` with a one-line reason.

    ``keyframes_only``: the decoder skips every frame that is not a keyframe (FFmpeg's ``skip_frame=nokey``,
    as ``ffmpeg -skip_frame nokey``): the packets are still read, but only keyframes are decoded, so keyframe
    sampling of a 30-frame GOP costs about 1/30 of a full decode instead of all of it."""
    if spec.kind is SourceKind.TEST and (spec.engine == "python" or "lavfi" not in av.formats_available):
        return _PatternSource(spec)  # every frame of a pattern is a keyframe: nothing to skip
    return _AvSource(spec, keyframes_only=keyframes_only)


def describe(spec: SourceSpec, exc: BaseException, waited_s: float | None = None) -> str:
    """One line for CaptureFailed: what failed, on which source, and PyAV's words for why.

    A timeout has many faces (PyAV's interrupt is ``ExitError``, but the RTSP demuxer reports "invalid
    data"), so an error after waiting the whole timeout is called a timeout whatever its code.
    """
    why = str(exc) or type(exc).__name__
    timed_out = waited_s is not None and waited_s >= 0.9 * spec.timeout_s
    if isinstance(exc, av.ExitError | TimeoutError) or (spec.live and timed_out):
        why = f"stream timeout: nothing within {spec.timeout_s:g} s ({why})"
    return f"{spec.kind} {spec.text}: {why}"[:_MAX_REASON]


class _AvSource:
    """A demuxer plus decoder for the first video stream."""

    def __init__(self, spec: SourceSpec, *, keyframes_only: bool = False) -> None:
        self._spec = spec
        timeout = spec.timeout_s if spec.kind is SourceKind.URL else None
        began = time.monotonic()
        try:
            self._container = av.open(spec.target, "r", format=spec.format, options=dict(spec.options),
                                      timeout=timeout)
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise SourceError(describe(spec, exc, time.monotonic() - began)) from exc
        if not self._container.streams.video:
            self._container.close()
            raise SourceError(f"{spec.kind} {spec.text}: no video stream")
        self._stream = self._container.streams.video[0]
        if keyframes_only:
            self._stream.codec_context.skip_frame = "NONKEY"
        rate = self._stream.average_rate or self._stream.guessed_rate
        self._rate = float(rate) if rate else 25.0

    def frames(self) -> Generator[DecodedFrame, None, None]:
        last = time.monotonic()
        try:
            for index, frame in enumerate(self._container.decode(self._stream)):
                yield _decoded(frame, index, self._rate)
                last = time.monotonic()
        except (av.FFmpegError, OSError) as exc:
            raise SourceError(describe(self._spec, exc, time.monotonic() - last)) from exc

    def close(self) -> None:
        self._container.close()


def _decoded(frame: av.VideoFrame, index: int, rate: float) -> DecodedFrame:
    base = frame.time_base
    seconds = float(frame.pts * base) if frame.pts is not None and base else index / rate
    return DecodedFrame(frame, frame.pts, base, seconds, bool(frame.key_frame), time.time())


class _PatternSource:
    """A moving luma ramp built in Python: the test pattern for PyAV builds without lavfi.

    Every frame is a keyframe (as with lavfi and raw video: there is no inter-frame coding).
    """

    def __init__(self, spec: SourceSpec) -> None:
        self._width, self._height = spec.size
        self._time_base = 1 / spec.rate
        self._ramp = bytes(x * 255 // self._width for x in range(self._width))

    def frames(self) -> Generator[DecodedFrame, None, None]:
        for index in itertools.count():
            shift = (index * 8) % self._width
            frame = av.VideoFrame(self._width, self._height, "yuv420p")
            _fill(frame.planes[0], self._ramp[shift:] + self._ramp[:shift])
            for chroma in frame.planes[1:]:
                _fill(chroma, b"\x80" * chroma.width)
            frame.pts, frame.time_base = index, self._time_base
            seconds = float(index * self._time_base)
            yield DecodedFrame(frame, index, self._time_base, seconds, True, time.time())

    def close(self) -> None:
        pass


def _fill(plane: av.video.plane.VideoPlane, row: bytes) -> None:
    plane.update((row + bytes(plane.line_size - len(row))) * plane.height)


def paced(frames: Iterator[DecodedFrame], stop: threading.Event) -> Generator[DecodedFrame, None, None]:
    """Release each frame when its presentation time comes, as a camera would; stop early when asked.

    A frame already late is released at once (the reader's bounded buffer then drops, as for a camera); a jump
    back in time (a looped pattern) restarts the schedule. A released frame is stamped with the release time:
    that is when a camera would have delivered it (the generator made it up to one interval earlier).
    """
    origin: tuple[float, float] | None = None
    for item in frames:
        now = time.monotonic()
        if origin is None or item.seconds < origin[1]:
            origin = (now, item.seconds)
        delay = origin[0] + (item.seconds - origin[1]) - now
        if delay > 0 and stop.wait(delay):
            return
        yield replace(item, decoded_at=time.time())
