"""The decode thread of one source and its bounded hand-off to the event loop.

Why one dedicated thread per source rather than ``asyncio.to_thread`` per frame: PyAV containers are not
thread-safe, so open, decode and close must happen on one thread; a thread that owns the container also
keeps reading a live camera while the loop is busy, which a per-frame call would not. Sampling runs in the
thread too (it is pure and cheap), so only kept frames cross over.

The hand-off is bounded (``maxsize``). When it is full, a *live* source drops the oldest waiting frame (a
camera cannot wait, and the freshest frame is the useful one) and counts it in ``stats.dropped``; a *file*
blocks its decoder instead (backpressure: no frame of a file is ever lost to a slow consumer).

Every wait has a deadline: opening is bounded by the spec's timeout, and ``get`` fails with ``SourceError``
when the decoder makes no progress for ``stall_s`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from thatdam_bus.frames.sources import (
    DecodedFrame,
    SourceError,
    SourceKind,
    SourceSpec,
    describe,
    open_source,
    paced,
)

log = logging.getLogger("thatdam_bus.frames.reader")

Accept = Callable[[DecodedFrame], bool]
"""Called on the decode thread for every frame; True keeps it (a ``Sampler``'s decision)."""

JOIN_TIMEOUT_S = 5.0
OPEN_GRACE_S = 2.0
"""Opening may take the timeout plus this: PyAV's own timeout should fire first, with a better reason."""


@dataclass(slots=True)
class ReaderStats:
    decoded: int = 0
    """Frames out of the decoder (with ``keyframes_only``, the keyframes alone: the rest is never decoded)."""
    sampled: int = 0
    dropped: int = 0
    """Sampled frames discarded because the loop lagged (live sources only)."""
    delivered: int = 0


class FrameReader:
    """Opens ``spec`` on its own thread and yields its kept frames through ``get``. Use as ``async with``."""

    def __init__(self, spec: SourceSpec, accept: Accept, *, maxsize: int = 4, stall_s: float | None = None,
                 stats: ReaderStats | None = None, keyframes_only: bool = False,
                 on_drop: Callable[[], None] | None = None) -> None:
        """``keyframes_only``: decode keyframes only (``open_source``); ``accept`` then sees only those.
        ``on_drop``: called on the decode thread for each frame dropped, as it is dropped (a metric counts
        drops while nothing is published, too; it must be thread-safe)."""
        if maxsize < 1:
            raise ValueError("frame buffer size must be >= 1")
        self.spec = spec
        self.stats = stats if stats is not None else ReaderStats()
        self._accept = accept
        self._keyframes_only = keyframes_only
        self._on_drop = on_drop
        self._maxsize = maxsize
        self._stall_s = stall_s if stall_s is not None else _default_stall(spec)
        self._buffer: deque[DecodedFrame] = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._done = False
        self._is_open = False
        self._error: SourceError | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._wakeup = asyncio.Event()
        self._opened = asyncio.Event()
        self._finished = asyncio.Event()

    async def __aenter__(self) -> FrameReader:
        await self.start()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start the thread and wait until the source is open; ``SourceError`` if it cannot be."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=f"thatdam-frames {self.spec.text}"[:60],
                                        daemon=True)
        self._thread.start()
        deadline = self.spec.timeout_s + OPEN_GRACE_S
        try:
            async with asyncio.timeout(deadline):
                await self._opened.wait()
        except TimeoutError:
            why = f"not open after {deadline:g} s"
            raise SourceError(f"{self.spec.kind} {self.spec.text}: {why}") from None
        if not self._is_open:
            raise self._error or SourceError(f"{self.spec.kind} {self.spec.text}: did not open")

    async def get(self) -> DecodedFrame | None:
        """The next kept frame, or None at the end of the source; ``SourceError`` when it fails or stalls."""
        while True:
            with self._cond:
                if self._buffer:
                    self._cond.notify()
                    self.stats.delivered += 1
                    return self._buffer.popleft()
                if self._done:
                    if self._error is not None:
                        raise self._error
                    return None
                self._wakeup.clear()
                seen = self.stats.decoded
            await self._wait(seen)

    async def aclose(self) -> None:
        """Stop the thread (it closes the source itself) and wait for it, within a deadline."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is None or not self._thread.is_alive():
            return
        try:
            async with asyncio.timeout(JOIN_TIMEOUT_S):
                await self._finished.wait()
        except TimeoutError:
            log.warning("decoder of %s still busy %.0f s after stop; left to finish on its own",
                        self.spec.text, JOIN_TIMEOUT_S)

    def __repr__(self) -> str:
        state = "done" if self._done else ("running" if self._thread else "new")
        return (f"<FrameReader {self.spec.text} {state} buffered={len(self._buffer)}/{self._maxsize}"
                f" decoded={self.stats.decoded} dropped={self.stats.dropped}>")

    async def _wait(self, seen: int) -> None:
        try:
            async with asyncio.timeout(self._stall_s):
                await self._wakeup.wait()
        except TimeoutError:
            if self.stats.decoded == seen:
                raise SourceError(f"{self.spec.kind} {self.spec.text}: no frame decoded for "
                                  f"{self._stall_s:g} s") from None

    # -- the decode thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            source = open_source(self.spec, keyframes_only=self._keyframes_only)
        except Exception as exc:
            self._finish(_as_source_error(self.spec, exc))
            return
        self._is_open = True
        self._call(self._opened.set)
        frames = source.frames()
        stream = paced(frames, self._stop) if self.spec.realtime else frames
        error: SourceError | None = None
        try:
            for item in stream:
                self.stats.decoded += 1
                if self._stop.is_set() or (self._accept(item) and not self._push(item)):
                    break
        except Exception as exc:
            error = _as_source_error(self.spec, exc)
        finally:
            for close in (stream.close, frames.close, source.close):
                _quietly(close)
            self._finish(error)

    def _push(self, item: DecodedFrame) -> bool:
        """Hand a kept frame over; False when stopping."""
        self.stats.sampled += 1
        dropped = False
        with self._cond:
            while len(self._buffer) >= self._maxsize and not self.spec.live and not self._stop.is_set():
                self._cond.wait()
            if self._stop.is_set():
                return False
            if len(self._buffer) >= self._maxsize:
                self._buffer.popleft()
                self.stats.dropped += 1
                dropped = True
            self._buffer.append(item)
        if dropped and self._on_drop is not None:
            self._on_drop()
        self._call(self._wakeup.set)
        return True

    def _finish(self, error: SourceError | None) -> None:
        with self._cond:
            self._done = True
            self._error = error
        self._call(self._on_finished)

    def _on_finished(self) -> None:
        self._opened.set()
        self._wakeup.set()
        self._finished.set()

    def _call(self, callback: Callable[..., Any]) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(callback)


def _quietly(close: Callable[[], object]) -> None:
    try:
        close()
    except Exception:  # closing a failed source may fail again; the first error is the one reported
        log.debug("error while closing a frame source", exc_info=True)


def _as_source_error(spec: SourceSpec, exc: Exception) -> SourceError:
    return exc if isinstance(exc, SourceError) else SourceError(describe(spec, exc))


def _default_stall(spec: SourceSpec) -> float:
    """A slow test pattern (say one frame per 20 s) must not count as stalled."""
    if spec.kind is SourceKind.TEST:
        return max(spec.timeout_s, 3 / float(spec.rate))
    return spec.timeout_s
