"""Encode one decoded frame as a JPEG thumbnail with PyAV's ``mjpeg`` encoder.

Why PyAV and not Pillow: the frame is already an ``AVFrame``; swscale scales and converts it to full-range
``yuvj420p`` in one pass, and the mjpeg encoder takes that directly (about 0.5-0.9 ms for a 320 px thumbnail
here). Going through RGB and Pillow would cost a conversion, a copy and another dependency.

Blocking: call ``JpegEncoder.encode`` off the event loop (``asyncio.to_thread``).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import av

PIXEL_FORMAT = "yuvj420p"
_TIME_BASE = Fraction(1, 1000)
DEFAULT_QUALITY = 5
"""mjpeg quantiser (2 best .. 31 worst), as ``ffmpeg -q:v``; 5 is visually clean at thumbnail sizes."""


@dataclass(frozen=True, slots=True)
class Jpeg:
    data: bytes
    width: int
    height: int


def thumbnail_size(width: int, height: int, target_width: int) -> tuple[int, int]:
    """Scale ``width x height`` to ``target_width`` keeping the aspect ratio; both sides even and >= 2.

    Even because 4:2:0 chroma is subsampled by two in each direction. Never upscales: a source narrower than
    the target keeps its own width (rounded down to even).
    """
    if width <= 0 or height <= 0 or target_width <= 0:
        raise ValueError(f"sizes must be positive, got {width}x{height} -> {target_width}")
    out_w = max(2, min(target_width, width) // 2 * 2)
    out_h = max(2, round(height * out_w / width / 2) * 2)
    return out_w, out_h


class JpegEncoder:
    """Turns frames into JPEG thumbnails ``width`` pixels wide.

    One mjpeg encoder is kept and reused while the output size stays the same (opening a codec per frame
    would cost more than the encode). Not thread-safe: one encoder per capture loop, used by one thread at a
    time (``asyncio.to_thread`` calls made in sequence are fine).
    """

    def __init__(self, width: int = 320, *, quality: int = DEFAULT_QUALITY) -> None:
        if width < 2:
            raise ValueError(f"thumbnail width must be >= 2, got {width}")
        if not 2 <= quality <= 31:
            raise ValueError(f"jpeg quality (mjpeg quantiser) must be in 2..31, got {quality}")
        self.width = width
        self.quality = quality
        self._codec: av.VideoCodecContext | None = None
        self._index = 0

    def encode(self, frame: av.VideoFrame) -> Jpeg:
        out_w, out_h = thumbnail_size(frame.width, frame.height, self.width)
        scaled = frame.reformat(width=out_w, height=out_h, format=PIXEL_FORMAT)
        # Our own clock: PyAV rescales pts from the frame's time base, and distinct source pts may collapse
        # into one tick of another base, which the encoder refuses as non-monotonic.
        scaled.pts, scaled.time_base = self._index, _TIME_BASE
        scaled.pict_type = av.video.frame.PictureType.NONE  # a decoded P/B type makes intra-only mjpeg refuse
        self._index += 1
        packets = self._encoder(out_w, out_h).encode(scaled)
        data = b"".join(bytes(packet) for packet in packets)
        if not data:
            raise RuntimeError("mjpeg encoder returned no packet")  # pragma: no cover - mjpeg has no delay
        return Jpeg(data, out_w, out_h)

    def _encoder(self, width: int, height: int) -> av.VideoCodecContext:
        codec = self._codec
        if codec is not None and codec.width == width and codec.height == height:
            return codec
        codec = av.CodecContext.create("mjpeg", "w")
        assert isinstance(codec, av.VideoCodecContext)
        codec.width, codec.height = width, height
        codec.pix_fmt = PIXEL_FORMAT
        codec.time_base = _TIME_BASE
        codec.qmin = codec.qmax = self.quality  # fixed quantiser: constant quality, no rate control
        codec.thread_count = 1  # a thumbnail is too small to slice; encoder threads cost more CPU than they save
        self._codec = codec
        return codec

    def __repr__(self) -> str:
        return f"<JpegEncoder width={self.width} quality={self.quality} encoded={self._index}>"
