"""Capture lifecycle payloads (``capture.<node>.<device>.started|stopped|failed``)."""

from __future__ import annotations

from pydantic import Field

from thatdam_bus.envelope import Payload
from thatdam_bus.events.fields import DeviceName, NodeId, Reason, ShortText


class CaptureStarted(Payload):
    event_type = "thatdam.capture.started.v1"
    node_id: NodeId
    device: DeviceName
    source: ShortText


class CaptureStopped(Payload):
    event_type = "thatdam.capture.stopped.v1"
    node_id: NodeId
    device: DeviceName
    reason: Reason = "requested"


class CaptureFailed(Payload):
    """A source failed; capture retries after ``retry_in_s`` (capped exponential backoff)."""

    event_type = "thatdam.capture.failed.v1"
    node_id: NodeId
    device: DeviceName
    source: ShortText
    reason: Reason
    attempt: int = Field(ge=1)
    retry_in_s: float | None = Field(default=None, ge=0)
