"""Intents (signed commands from scripts or nodes) and their results."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from thatdam_bus.envelope import Payload
from thatdam_bus.events.fields import DeviceName, NodeId, Reason, ShortText


class CaptureStartIntent(Payload):
    """Ask ``node_id`` to start capturing ``device`` from ``source`` (routing key ``intent.capture.start``)."""

    event_type = "thatdam.intent.capture.start.v1"
    durable = True
    signed = True
    node_id: NodeId
    device: DeviceName
    source: ShortText | None = Field(default=None, description="PyAV source; default: the device's configured one")
    fps: float | None = Field(default=None, gt=0, le=120,
                              description="frames sampled per second; None = the node's THATDAM_CAPTURE_FPS "
                                          "(itself unset: keyframes only)")
    width: int | None = Field(default=None, gt=0, le=4096,
                              description="thumbnail width in pixels; None = the node's THATDAM_THUMBNAIL_WIDTH")


class CaptureStopIntent(Payload):
    event_type = "thatdam.intent.capture.stop.v1"
    durable = True
    signed = True
    node_id: NodeId
    device: DeviceName


class IntentStatus(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DONE = "done"


class IntentResult(Payload):
    """Published on ``intent.result.<intent_id>`` by the node that handled (or refused) the intent."""

    event_type = "thatdam.intent.result.v1"
    intent_id: str = Field(max_length=64)
    status: IntentStatus
    node_id: NodeId
    reason: Reason | None = None
