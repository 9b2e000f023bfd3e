"""Capture: run this node's PyAV capture loops and publish what they produce.

Roles: worker, solo and leader: every role a node with cameras can hold (winning the lease must not switch a
node's cameras off, and a one-node cluster must still capture); a proxy has no devices of its own.

Ownership. The service task ``run_captures`` *is* the capture manager's lifetime: it opens the blob store (off
the event loop), starts one ``CaptureLoop`` per ``THATDAM_SOURCES`` entry and runs every loop as a child of its
own ``asyncio.TaskGroup``. Intent handlers never run a capture themselves: they ask the manager, which returns at
once, and the group runs the loop. Cancelling the service task (role change, shutdown) cancels the group; each
loop then emits ``capture.<node>.<device>.stopped``. No capture task outlives the service task.

Intents are addressed to one node (``per_node``): every node consumes its own durable copy of
``intent.capture.start|stop`` and skips the ones naming another node. Starting a running device is idempotent
(``done``, nothing changes); stopping a device that does not capture is rejected. Captures started by intent
live in memory: a restart or a link change (solo -> cluster) keeps only the configured ones.

Events: ``frame.<node>.<device>.ready`` (durable, confirmed: the claim check of one JPEG) and
``capture.<node>.<device>.started|stopped|failed`` (fan-out), each publish bounded by a deadline.

Retention and the claim check. Blobs are not pinned: pins live in one process, and the indexer that must find
the blob usually runs in another, on another node. Instead the blob store never evicts a blob younger than
``THATDAM_BLOB_GRACE_S`` (by mtime, so a restart keeps the rule): a frame-ready event processed within the grace
period finds its blob, whatever the caps say. An event that waits longer (an indexer down for over an hour) may
find its blob gone; the indexer then dead-letters it with "blob missing", visibly, and never indexes it. The
price is that the store may exceed its caps by what is written within the grace period.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
from typing import Any

from thatdam_bus import (
    Backoff,
    BlobStore,
    Bus,
    CaptureConfig,
    CaptureFailed,
    CaptureLoop,
    CaptureStarted,
    CaptureStartIntent,
    CaptureStopIntent,
    CaptureStopped,
    ConfigError,
    Envelope,
    FrameReady,
    HandlerContext,
    QueueKind,
    Reject,
    Role,
    Sampling,
    Service,
    Settings,
    TaskContext,
    parse_source,
    topics,
)

log = logging.getLogger("handlers.capture")
PUBLISH_TIMEOUT_S = 10.0
_WORD = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")


def configured_sources(settings: Settings) -> dict[str, str]:
    """``THATDAM_SOURCES`` as device -> source. An entry is ``device=source``, or a bare source whose device
    name is derived from it (``/dev/video0`` -> ``dev_video0``). A malformed one is a ``ConfigError``."""
    sources: dict[str, str] = {}
    for entry in settings.sources:
        device, sep, source = entry.partition("=")
        if not (sep and _WORD.match(device.strip())):
            device, source = topics.device_word(entry), entry
        device, source = device.strip(), source.strip()
        try:
            parse_source(source)  # a bad test:// URL stops the node at start-up, not at its first retry
        except ConfigError as exc:
            raise ConfigError(f"invalid THATDAM_SOURCES entry {entry!r}: {exc}") from None
        if device in sources:
            raise ConfigError(f"invalid THATDAM_SOURCES: device {device!r} appears twice")
        sources[device] = source
    return sources


class CaptureManager:
    """This node's captures by device: the wanted ones before the service task runs, the running ones after."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.configured = configured_sources(settings)
        self.store: BlobStore | None = None
        self._bus: Bus | None = None
        self._group: asyncio.TaskGroup | None = None
        self._pending: dict[str, tuple[CaptureConfig, contextvars.Context | None]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.loops: dict[str, CaptureLoop] = {}

    # -- the service task ---------------------------------------------------------------------------------

    async def run(self, bus: Bus) -> None:
        """Own the blob store and every capture loop until cancelled."""
        self.store = await asyncio.to_thread(self._open_store)
        self._bus = bus
        for device, source in self.configured.items():
            self._pending.setdefault(device, (self._config(bus.node_id, device, source), None))
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                for config, context in list(self._pending.values()):
                    self._launch(config, context)
                self._pending.clear()
                await asyncio.get_running_loop().create_future()  # until the service task is cancelled
        finally:
            self._group = None
            self._bus = None

    def _open_store(self) -> BlobStore:
        settings = self.settings
        return BlobStore(settings.blob_dir or settings.state_dir / "blobs", max_count=settings.blob_max_count,
                         max_bytes=settings.blob_max_bytes, grace_s=settings.blob_grace_s)

    # -- what intents ask ---------------------------------------------------------------------------------

    def capturing(self, device: str) -> bool:
        task = self._tasks.get(device)
        return device in self._pending or (task is not None and not task.done() and not task.cancelling())

    def start(self, node_id: str, device: str, *, source: str | None = None, fps: float | None = None,
              width: int | None = None) -> bool:
        """Start ``device`` (False: it already captures, nothing changed). Returns at once; ``Reject`` when
        there is nothing to capture from."""
        if self.capturing(device):
            return False
        source = source or self.configured.get(device)
        if source is None:
            raise Reject(f"no source for {device}: name one in the intent or in THATDAM_SOURCES")
        try:
            parse_source(source)
        except ConfigError as exc:
            raise Reject(f"bad source for {device}: {exc}") from None
        config = self._config(node_id, device, source, fps, width)
        # The loop runs in the context of the intent's handler, so its events continue the intent's trace.
        context = contextvars.copy_context()
        if self._group is None:
            self._pending[device] = (config, context)  # the service task starts it as soon as it runs
        else:
            self._launch(config, context)
        return True

    def stop(self, device: str) -> None:
        """Cancel the capture of ``device``; its loop reports ``stopped`` on its way out."""
        if self._pending.pop(device, None) is not None:
            return
        if not self.capturing(device):
            raise Reject(f"no capture running on {device}")
        self._tasks[device].cancel()

    # -- loops ----------------------------------------------------------------------------------------------

    def _config(self, node_id: str, device: str, source: str, fps: float | None = None,
                width: int | None = None) -> CaptureConfig:
        settings = self.settings
        backoff = Backoff(base_s=settings.capture_retry_s,
                          cap_s=max(settings.capture_retry_s, settings.capture_retry_max_s))
        return CaptureConfig(node_id, device, source, Sampling(fps if fps is not None else settings.capture_fps),
                             width=width or settings.thumbnail_width, backoff=backoff)

    def _launch(self, config: CaptureConfig, context: contextvars.Context | None = None) -> None:
        assert self._group is not None and self.store is not None
        loop = CaptureLoop(config, self.store, on_frame=self._frame, on_started=self._started,
                           on_failed=self._failed, on_stopped=self._stopped)
        previous = self._tasks.get(loop.device)  # still stopping: the new loop waits for the device
        task = self._group.create_task(self._supervise(loop, previous), name=f"capture {loop.device}",
                                       context=context)
        self._tasks[loop.device] = task
        self.loops[loop.device] = loop
        task.add_done_callback(lambda done: self._forget(loop.device, done))

    async def _supervise(self, loop: CaptureLoop, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.wait({previous})
        try:
            await loop.run()
        except Exception:  # run() only raises CancelledError; anything else must not take the group down
            log.exception("capture %s ended with an error", loop.device)

    def _forget(self, device: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(device) is task:
            del self._tasks[device]
            self.loops.pop(device, None)

    # -- publishing -----------------------------------------------------------------------------------------

    async def _publish(self, payload: Any, routing_key: str) -> None:
        assert self._bus is not None
        async with asyncio.timeout(PUBLISH_TIMEOUT_S):
            await self._bus.publish(payload, routing_key)

    async def _frame(self, event: FrameReady) -> None:
        await self._publish(event, topics.frame_ready(event.node_id, event.device))

    async def _started(self, event: CaptureStarted) -> None:
        log.info("capture %s started from %s", event.device, event.source)
        await self._publish(event, topics.capture_state(event.node_id, event.device, "started"))

    async def _failed(self, event: CaptureFailed) -> None:
        await self._publish(event, topics.capture_state(event.node_id, event.device, "failed"))

    async def _stopped(self, event: CaptureStopped) -> None:
        log.info("capture %s stopped: %s", event.device, event.reason)
        await self._publish(event, topics.capture_state(event.node_id, event.device, "stopped"))

    def __repr__(self) -> str:
        running = sorted(d for d in self._tasks if self.capturing(d))
        return f"<CaptureManager running={running} pending={sorted(self._pending)} store={self.store!r}>"


service = Service("capture", roles={Role.WORKER, Role.SOLO, Role.LEADER}, state=CaptureManager,
                  description="Captures this node's cameras into the blob store and publishes frame-ready events.")


@service.task()
async def run_captures(ctx: TaskContext) -> None:
    """Run every configured capture, and the ones intents start, until the role ends or the node stops."""
    manager: CaptureManager = ctx.state
    await manager.run(ctx.bus)


@service.on(topics.intent("capture", "start"), queue=QueueKind.DURABLE, per_node=True)
async def start(event: Envelope[CaptureStartIntent], ctx: HandlerContext) -> None:
    """Start capturing a device on this node; a device already capturing is left as it is."""
    manager: CaptureManager = ctx.state
    data = event.data
    if not manager.start(ctx.node_id, data.device, source=data.source, fps=data.fps, width=data.width):
        ctx.log.info("capture %s already running: intent %s changes nothing", data.device, event.id)


@service.on(topics.intent("capture", "stop"), queue=QueueKind.DURABLE, per_node=True)
async def stop(event: Envelope[CaptureStopIntent], ctx: HandlerContext) -> None:
    """Stop capturing a device on this node; a device that does not capture is rejected."""
    manager: CaptureManager = ctx.state
    manager.stop(event.data.device)
