"""The capture pipeline: open a source with PyAV, sample frames, encode JPEG thumbnails, store them by hash.

Pure pipeline, no bus: ``CaptureLoop`` hands ``FrameReady`` / ``Capture*`` payloads to async callbacks and the
capture handler publishes them. Frames never travel in messages; the blob store is the claim check.

    sources   parse and open a source (v4l2 device, file, network stream, ``test://`` pattern); blocking
    reader    the decode thread of one source and its bounded hand-off to the event loop
    sampler   keyframes only, or N per second of presentation time (pure)
    jpeg      scale and encode one frame with PyAV's mjpeg encoder
    blobstore content-addressed directory, atomic writes, oldest-first retention that skips pinned and young blobs
    capture   the loop tying them together, with capped exponential backoff
"""

try:
    import av  # noqa: F401
except ImportError as exc:  # pragma: no cover - av is a core dependency, but a broken wheel says it clearly
    raise ImportError("thatdam_bus.frames needs PyAV: pip install 'av>=14'") from exc

from thatdam_bus.frames.blobstore import BlobStore, BlobStoreStats, StoredBlob
from thatdam_bus.frames.capture import Backoff, CaptureConfig, CaptureLoop, CaptureStats
from thatdam_bus.frames.jpeg import Jpeg, JpegEncoder, thumbnail_size
from thatdam_bus.frames.reader import FrameReader, ReaderStats
from thatdam_bus.frames.sampler import Sampler, Sampling
from thatdam_bus.frames.sources import DecodedFrame, SourceError, SourceKind, SourceSpec, parse_source

__all__ = [
    "Backoff",
    "BlobStore",
    "BlobStoreStats",
    "CaptureConfig",
    "CaptureLoop",
    "CaptureStats",
    "DecodedFrame",
    "FrameReader",
    "Jpeg",
    "JpegEncoder",
    "ReaderStats",
    "Sampler",
    "Sampling",
    "SourceError",
    "SourceKind",
    "SourceSpec",
    "StoredBlob",
    "parse_source",
    "thumbnail_size",
]
