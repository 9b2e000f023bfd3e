"""Proxy: the seeds' camera-proxy. On a host without cameras of its own, relay the newest frame of every camera
in the cluster as a lightweight event that viewers can follow at a bounded rate.

Contract.
- In: ``frame.*.*.ready`` through an *ephemeral* queue: a fan-out copy, so the indexer's work queue is untouched.
- State: the newest ``FrameReady`` per (node, device), newest by ``captured_at`` (``seq`` restarts with a
  capture), and how many frames arrived since the last relay.
- Out: ``frame.<node>.<device>.latest`` (``FrameLatest``: the same claim check plus ``relayed_by``,
  ``frame_event_id`` and ``skipped``), fan-out and not durable: a viewer that misses one gets the next.
- Rate: at most one relay per camera per ``THATDAM_PROXY_INTERVAL``. A frame that arrives when its camera's
  last relay is older than the interval goes out at once (a 1 fps camera is relayed without delay); frames in
  between are coalesced, and the newest of them leaves when the interval has passed (the ``flush`` task), so
  the latest frame is never stuck behind the throttle.
- Several proxies relay independently; ``relayed_by`` tells their relays apart.
- Trace: a relay continues the trace of the frame it relays, whether the handler sends it at once or the
  ``flush`` task later (it keeps the frame's ``traceparent``), so ``bus-tail --trace`` follows a capture to
  its relays on this node.

Role: proxy only (a node without devices in a cluster, or one pinned ``THATDAM_ROLE=proxy``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from thatdam_bus import (
    Envelope,
    FrameLatest,
    FrameReady,
    HandlerContext,
    Patterns,
    Role,
    Service,
    Settings,
    TaskContext,
    topics,
)

PUBLISH_TIMEOUT_S = 5.0


@dataclass
class _Camera:
    event_id: str
    frame: FrameReady
    traceparent: str | None = None
    relayed_at: float | None = None
    pending: bool = True
    skipped: int = 0


class LatestFrames:
    """The newest frame per camera and the relay throttle; pure (``clock`` is injected), no I/O."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._cameras: dict[tuple[str, str], _Camera] = {}

    @classmethod
    def for_settings(cls, settings: Settings) -> LatestFrames:
        return cls(settings.proxy_interval)

    def remember(self, event_id: str, frame: FrameReady, traceparent: str | None = None) -> bool:
        """Keep ``frame`` (and the trace it came in) if it is the camera's newest; True when it is due for
        relay right now."""
        key = (frame.node_id, frame.device)
        camera = self._cameras.get(key)
        if camera is None:
            camera = self._cameras[key] = _Camera(event_id, frame, traceparent)
        elif frame.captured_at < camera.frame.captured_at:
            return False  # late delivery of an older frame: the viewer already has newer
        else:
            if camera.pending:
                camera.skipped += 1  # the previous newest was never relayed: coalesced into this one
            camera.event_id, camera.frame, camera.traceparent, camera.pending = event_id, frame, traceparent, True
        return self._due(camera)

    def take(self, node_id: str, device: str, relayed_by: str) -> FrameLatest:
        """The relay of one camera's newest frame; marks it sent."""
        camera = self._cameras[(node_id, device)]
        frame = camera.frame
        latest = FrameLatest(node_id=frame.node_id, device=frame.device, seq=frame.seq, captured_at=frame.captured_at,
                             width=frame.width, height=frame.height, uri=frame.uri, sha256=frame.sha256,
                             size_bytes=frame.size_bytes, frame_event_id=camera.event_id, relayed_by=relayed_by,
                             skipped=camera.skipped)
        camera.relayed_at, camera.pending, camera.skipped = self._clock(), False, 0
        return latest

    def due(self) -> list[tuple[str, str]]:
        """Cameras whose newest frame waits and whose interval has passed."""
        return [key for key, camera in self._cameras.items() if self._due(camera)]

    def trace_of(self, node_id: str, device: str) -> str | None:
        """The ``traceparent`` of the camera's newest frame (its relay continues that trace)."""
        camera = self._cameras.get((node_id, device))
        return camera.traceparent if camera is not None else None

    def latest(self, node_id: str, device: str) -> FrameReady | None:
        camera = self._cameras.get((node_id, device))
        return camera.frame if camera is not None else None

    def _due(self, camera: _Camera) -> bool:
        return camera.pending and (camera.relayed_at is None
                                   or self._clock() - camera.relayed_at >= self.interval_s)

    def __repr__(self) -> str:
        return f"<LatestFrames cameras={len(self._cameras)} interval={self.interval_s:g}s>"


service = Service("proxy", roles={Role.PROXY}, state=LatestFrames.for_settings,
                  description="Relays each camera's newest frame as frame.<node>.<device>.latest, rate-bounded.")


async def _relay(ctx: HandlerContext | TaskContext, frames: LatestFrames, node_id: str, device: str) -> None:
    latest = frames.take(node_id, device, ctx.node_id)
    try:
        async with asyncio.timeout(PUBLISH_TIMEOUT_S):
            await ctx.bus.publish(latest, topics.frame_latest(node_id, device))
    except Exception as exc:  # lossy by contract: the next frame will be relayed
        ctx.log.warning("could not relay the latest frame of %s/%s: %r", node_id, device, exc)


@service.on(Patterns.FRAMES)
async def remember(event: Envelope[FrameReady], ctx: HandlerContext) -> None:
    """Keep the camera's newest frame; relay it at once unless this camera was relayed within the interval."""
    frames: LatestFrames = ctx.state
    if frames.remember(event.id, event.data, ctx.traceparent):
        await _relay(ctx, frames, event.data.node_id, event.data.device)


@service.task()
async def flush(ctx: TaskContext) -> None:
    """Relay the coalesced newest frames whose interval has passed (the trailing edge of the throttle)."""
    frames: LatestFrames = ctx.state
    while True:
        await asyncio.sleep(frames.interval_s / 4)
        for node_id, device in frames.due():
            with ctx.continuing(frames.trace_of(node_id, device)):
                await _relay(ctx, frames, node_id, device)
