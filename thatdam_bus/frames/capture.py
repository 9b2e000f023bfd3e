"""The capture loop of one device: source -> sampler -> JPEG -> blob store -> ``FrameReady``, and retries.

Why callbacks and not a bus: this layer is the pure pipeline, testable without a broker; the owner (the
capture handler) turns each payload into an envelope and publishes it. Lifecycle is reported the same way:
``CaptureStarted`` each time the source opens, ``CaptureFailed`` for each failure (with the attempt number and
the delay before the next try), ``CaptureStopped`` once at the end.

A failing source (missing device, corrupt file, silent stream) is retried forever with capped exponential
backoff and jitter; the attempt counter resets once a frame gets through. ``run`` never raises except
``CancelledError``: stopping means cancelling its task (owned by the caller's task group), which still emits
``CaptureStopped(reason="requested")``. A file ends with ``CaptureStopped(reason="end of file")`` unless
``loop`` is set; a live stream that ends counts as a failure, because cameras are not supposed to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from thatdam_bus import topics
from thatdam_bus.events import CaptureFailed, CaptureStarted, CaptureStopped, FrameReady
from thatdam_bus.frames.blobstore import BlobStore, StoredBlob
from thatdam_bus.frames.jpeg import DEFAULT_QUALITY, Jpeg, JpegEncoder
from thatdam_bus.frames.reader import FrameReader, ReaderStats
from thatdam_bus.frames.sampler import Sampler, Sampling
from thatdam_bus.frames.sources import DEFAULT_TIMEOUT_S, DecodedFrame, parse_source
from thatdam_bus.metrics.instruments import FRAMES_CAPTURED, FRAMES_DROPPED

log = logging.getLogger("thatdam_bus.frames.capture")

EventT = TypeVar("EventT")
Emit = Callable[[EventT], Awaitable[None]]
Sleep = Callable[[float], Awaitable[None]]
STOP_EMIT_TIMEOUT_S = 5.0
_SHORT_TEXT = 256


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with proportional jitter: ``min(cap, base * 2**(n-1)) * (1 - jitter*r)``.

    Jitter shortens (never lengthens) the delay, so the cap is a hard bound, and with ``jitter < 0.5`` the
    delays still grow strictly until the cap: a monitoring chart shows the source backing off.
    """

    base_s: float = 0.5
    cap_s: float = 30.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not (0 < self.base_s <= self.cap_s) or not 0 <= self.jitter < 1:
            raise ValueError(f"invalid backoff {self}: need 0 < base <= cap and 0 <= jitter < 1")

    def delay(self, attempt: int, rand: float) -> float:
        raw = min(self.cap_s, self.base_s * 2.0 ** min(max(attempt - 1, 0), 60))
        return raw * (1 - self.jitter * rand)


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    """What to capture and how. ``sampling.fps=None`` keeps keyframes only (as ``CaptureStartIntent``)."""

    node_id: str
    device: str
    source: str
    sampling: Sampling = field(default_factory=Sampling)
    width: int = 320
    quality: int = DEFAULT_QUALITY
    loop: bool = False
    timeout_s: float = DEFAULT_TIMEOUT_S
    backoff: Backoff = field(default_factory=Backoff)
    buffer: int = 4
    pin_frames: bool = False
    """Put each JPEG pinned; whoever processes its ``FrameReady`` calls ``store.unpin(sha256)``."""
    source_options: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class CaptureStats:
    sessions: int = 0
    published: int = 0
    failures: int = 0
    callback_errors: int = 0
    reader: ReaderStats = field(default_factory=ReaderStats)


class CaptureLoop:
    """Runs one capture until its task is cancelled (or its file ends). See the module docstring."""

    def __init__(
        self,
        config: CaptureConfig,
        store: BlobStore,
        *,
        on_frame: Emit[FrameReady],
        on_started: Emit[CaptureStarted] | None = None,
        on_failed: Emit[CaptureFailed] | None = None,
        on_stopped: Emit[CaptureStopped] | None = None,
        sleep: Sleep = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.device = topics.device_word(config.device)
        self.routing_key = topics.frame_ready(config.node_id, self.device)  # also validates the node id
        self.spec = parse_source(config.source, timeout_s=config.timeout_s, options=config.source_options)
        self.stats = CaptureStats()
        self._store = store
        self._encoder = JpegEncoder(config.width, quality=config.quality)
        self._on_frame, self._on_started, self._on_failed, self._on_stopped = (
            on_frame, on_started, on_failed, on_stopped)
        self._sleep = sleep
        self._rand = rand
        self._seq = 0
        self._attempt = 0
        self._state = "new"
        self._captured_metric = FRAMES_CAPTURED.labels(device=self.device)
        self._dropped_metric = FRAMES_DROPPED.labels(device=self.device)

    async def run(self) -> None:
        """Capture until cancelled or the file ends; emits ``CaptureStopped`` either way."""
        try:
            reason = await self._sessions()
        except asyncio.CancelledError:
            await self._stopped("requested")
            raise
        await self._stopped(reason)

    def __repr__(self) -> str:
        return (f"<CaptureLoop {self.config.node_id}/{self.device} {self.spec.kind} {self._state}"
                f" attempt={self._attempt} seq={self._seq} dropped={self.stats.reader.dropped}>")

    async def _sessions(self) -> str:
        while True:
            try:
                delivered = await self._session()
            except Exception as exc:  # CancelledError is not an Exception: it ends the loop
                await self._failed(str(exc) or repr(exc))
                continue
            if self.spec.live:
                await self._failed(f"{self.spec.kind} {self.spec.text}: stream ended")
            elif not self.config.loop:
                return "end of file"
            elif delivered == 0:  # looping a file that yields nothing would spin: back off instead
                await self._failed(f"{self.spec.kind} {self.spec.text}: end of file before any frame")

    async def _session(self) -> int:
        """Open, announce, deliver until the source ends; returns the frames delivered, raises on failure."""
        sampler = Sampler(self.config.sampling)
        reader = FrameReader(self.spec, lambda item: sampler.accept(item.seconds, item.keyframe),
                             maxsize=self.config.buffer, stats=self.stats.reader,
                             keyframes_only=self.config.sampling.fps is None, on_drop=self._dropped_metric.inc)
        try:
            self._state = "opening"
            await reader.start()
            self._state = "running"
            self.stats.sessions += 1
            await self._emit(self._on_started, CaptureStarted(
                node_id=self.config.node_id, device=self.device, source=self.spec.text[:_SHORT_TEXT]))
            delivered = 0
            while (item := await reader.get()) is not None:
                await self._deliver(item)
                delivered += 1
            return delivered
        finally:
            await reader.aclose()

    async def _deliver(self, item: DecodedFrame) -> None:
        jpeg, blob = await self._encode_and_store_whole(item)
        event = FrameReady(
            node_id=self.config.node_id, device=self.device, seq=self._seq, pts=item.pts,
            captured_at=datetime.fromtimestamp(item.decoded_at, UTC), width=jpeg.width, height=jpeg.height,
            uri=blob.uri, sha256=blob.sha256, size_bytes=blob.size, keyframe=item.keyframe)
        self._seq += 1
        self._attempt = 0
        emitting = asyncio.ensure_future(self._emit(self._on_frame, event))
        try:
            await asyncio.shield(emitting)
        except asyncio.CancelledError:
            # Stopping while the frame is being published: finish it (bounded) and account for it before the
            # loop ends, so a frame the broker got is counted, and a pinned blob is never left for nobody.
            try:
                await asyncio.wait([emitting], timeout=STOP_EMIT_TIMEOUT_S)
            finally:
                if not emitting.done():
                    emitting.cancel()
                    await asyncio.wait([emitting])
                self._account(emitting, blob)
            raise
        self._account(emitting, blob)

    async def _encode_and_store_whole(self, item: DecodedFrame) -> tuple[Jpeg, StoredBlob]:
        """``_encode_and_store`` on a worker thread, which a cancellation cannot interrupt: when one comes,
        the thread's work is waited for and its blob unpinned (no event will ever name it), then it goes on."""
        work = asyncio.ensure_future(asyncio.to_thread(self._encode_and_store, item))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                _, blob = await work
                if self.config.pin_frames:
                    self._store.unpin(blob.sha256)
            raise

    def _account(self, emitting: asyncio.Future[bool], blob: StoredBlob) -> None:
        """Count a published frame. Unpin the blob of a frame that was never sent; one whose publish was cut
        off keeps its pin, since it may have reached the broker (a consumer must still find its blob)."""
        sent = None if emitting.cancelled() else emitting.result()
        if sent:
            self.stats.published += 1
            self._captured_metric.inc()
        elif sent is False and self.config.pin_frames:
            self._store.unpin(blob.sha256)  # nobody will process an event that was never sent

    def _encode_and_store(self, item: DecodedFrame) -> tuple[Jpeg, StoredBlob]:
        """Runs on a worker thread: the CPU (scale + encode) and the file I/O of one frame."""
        jpeg = self._encoder.encode(item.frame)
        return jpeg, self._store.put(jpeg.data, pin=self.config.pin_frames)

    async def _failed(self, reason: str) -> None:
        self._attempt += 1
        self.stats.failures += 1
        self._state = "backing off"
        delay = self.config.backoff.delay(self._attempt, self._rand())
        log.warning("capture %s/%s failed (attempt %d, retry in %.2f s): %s",
                    self.config.node_id, self.device, self._attempt, delay, reason)
        await self._emit(self._on_failed, CaptureFailed(
            node_id=self.config.node_id, device=self.device, source=self.spec.text[:_SHORT_TEXT],
            reason=reason[:1024], attempt=self._attempt, retry_in_s=delay))
        await self._sleep(delay)

    async def _stopped(self, reason: str) -> None:
        self._state = "stopped"
        event = CaptureStopped(node_id=self.config.node_id, device=self.device, reason=reason)
        try:
            async with asyncio.timeout(STOP_EMIT_TIMEOUT_S):
                await self._emit(self._on_stopped, event)
        except TimeoutError:
            log.warning("capture %s/%s: stopped callback took over %.0f s; abandoned",
                        self.config.node_id, self.device, STOP_EMIT_TIMEOUT_S)

    async def _emit(self, callback: Emit[EventT] | None, event: EventT) -> bool:
        """Deliver to the owner; a callback that raises is logged and counted, never kills the capture."""
        if callback is None:
            return True
        try:
            await callback(event)
        except Exception:
            self.stats.callback_errors += 1
            log.warning("capture %s/%s: %s callback failed", self.config.node_id, self.device,
                        type(event).__name__, exc_info=True)
            return False
        return True
