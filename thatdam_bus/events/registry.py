"""CloudEvents ``type`` -> payload model, built once from the model classes themselves."""

from __future__ import annotations

from thatdam_bus.envelope import Payload
from thatdam_bus.errors import SchemaError
from thatdam_bus.events.capture import CaptureFailed, CaptureStarted, CaptureStopped
from thatdam_bus.events.cluster import LeaderElected, LeaderLost, LeaderResigned
from thatdam_bus.events.frame import FrameIndexed, FrameLatest, FrameReady
from thatdam_bus.events.intent import CaptureStartIntent, CaptureStopIntent, IntentResult
from thatdam_bus.events.node import NodeHeartbeat, NodeJoined, NodeLeft, NodeLost, NodeRoleChanged

ALL_PAYLOADS: tuple[type[Payload], ...] = (
    NodeHeartbeat,
    NodeJoined,
    NodeLeft,
    NodeLost,
    NodeRoleChanged,
    LeaderElected,
    LeaderResigned,
    LeaderLost,
    FrameReady,
    FrameIndexed,
    FrameLatest,
    CaptureStarted,
    CaptureStopped,
    CaptureFailed,
    CaptureStartIntent,
    CaptureStopIntent,
    IntentResult,
)

_BY_TYPE: dict[str, type[Payload]] = {model.event_type: model for model in ALL_PAYLOADS}
if len(_BY_TYPE) != len(ALL_PAYLOADS):
    raise RuntimeError("two payload models share one event_type")


def model_for_type(event_type: str) -> type[Payload]:
    """The payload model for a CloudEvents ``type``; ``SchemaError`` for a type nobody declared."""
    try:
        return _BY_TYPE[event_type]
    except KeyError:
        raise SchemaError(f"unknown event type {event_type!r}") from None


CHANNELS: tuple[tuple[str, type[Payload], str], ...] = (
    ("node.*.heartbeat", NodeHeartbeat, "alive, role, capabilities, load (fan-out, lossy is fine)"),
    ("node.*.joined", NodeJoined, "a node came up"),
    ("node.*.left", NodeLeft, "a node shut down gracefully"),
    ("node.*.lost", NodeLost, "the leader saw a node miss its heartbeats"),
    ("node.*.role", NodeRoleChanged, "a node's role changed"),
    ("cluster.leader.elected", LeaderElected, "a node took the lease, with its epoch"),
    ("cluster.leader.resigned", LeaderResigned, "the leader gave the lease up"),
    ("cluster.leader.lost", LeaderLost, "a lease expired without resignation"),
    ("frame.*.*.ready", FrameReady, "a frame is in the blob store (claim check; durable)"),
    ("frame.*.*.indexed", FrameIndexed, "a frame is in an indexer's catalogue (once per frame; lossy)"),
    ("frame.*.*.latest", FrameLatest, "a proxy's coalesced relay of a camera's newest frame (lossy)"),
    ("capture.*.*.started", CaptureStarted, "capture started on a device"),
    ("capture.*.*.stopped", CaptureStopped, "capture stopped on a device"),
    ("capture.*.*.failed", CaptureFailed, "capture failed; retried with backoff"),
    ("intent.capture.start", CaptureStartIntent, "signed command: start capture (durable)"),
    ("intent.capture.stop", CaptureStopIntent, "signed command: stop capture (durable)"),
    ("intent.result.*", IntentResult, "accepted / rejected (with reason) / done"),
)
"""Every channel: routing-key pattern, payload model, meaning. The AsyncAPI document is built from this."""
