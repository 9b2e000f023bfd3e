"""Payload models of every event type, and the registry from CloudEvents ``type`` to model."""

from thatdam_bus.events.capture import CaptureFailed, CaptureStarted, CaptureStopped
from thatdam_bus.events.cluster import LeaderElected, LeaderLost, LeaderResigned
from thatdam_bus.events.frame import FrameIndexed, FrameLatest, FrameReady
from thatdam_bus.events.intent import CaptureStartIntent, CaptureStopIntent, IntentResult, IntentStatus
from thatdam_bus.events.node import (
    Capabilities,
    NodeHeartbeat,
    NodeJoined,
    NodeLeft,
    NodeLost,
    NodeRoleChanged,
    Role,
)
from thatdam_bus.events.registry import ALL_PAYLOADS, model_for_type

__all__ = [
    "ALL_PAYLOADS",
    "Capabilities",
    "CaptureFailed",
    "CaptureStartIntent",
    "CaptureStarted",
    "CaptureStopIntent",
    "CaptureStopped",
    "FrameIndexed",
    "FrameLatest",
    "FrameReady",
    "IntentResult",
    "IntentStatus",
    "LeaderElected",
    "LeaderLost",
    "LeaderResigned",
    "NodeHeartbeat",
    "NodeJoined",
    "NodeLeft",
    "NodeLost",
    "NodeRoleChanged",
    "Role",
    "model_for_type",
]
