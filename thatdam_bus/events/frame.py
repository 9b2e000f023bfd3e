"""Frame-ready payload: a claim check. The JPEG lives in the blob store; the message carries where and what."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from thatdam_bus.envelope import Payload
from thatdam_bus.events.fields import DeviceName, NodeId


class FrameReady(Payload):
    event_type = "thatdam.frame.ready.v1"
    durable = True
    node_id: NodeId
    device: DeviceName
    seq: int = Field(ge=0)
    pts: int | None = Field(default=None, description="presentation timestamp in stream time-base units")
    captured_at: datetime
    width: int = Field(gt=0, le=16384)
    height: int = Field(gt=0, le=16384)
    format: Literal["jpeg"] = "jpeg"
    uri: str = Field(max_length=1024, description="where the blob is, e.g. file:///var/lib/thatdam/blobs/ab/cd..")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)
    keyframe: bool


class FrameIndexed(Payload):
    """A frame is in an indexer's catalogue (``frame.<node>.<device>.indexed``, keyed by the capturing node).

    Announced by the node that indexed it, after its row is committed: once per catalogue holding the frame
    (normally one; a frame redelivered to another node after a crash may be in two, and announced by both). It
    continues the frame's trace, so ``bus-tail --trace`` follows a capture to the catalogue. Transient: the
    catalogue is the record, this is the news (an indexer killed between its commit and this publish finds the
    row when the frame comes back to it, and announces nothing)."""

    event_type = "thatdam.frame.indexed.v1"
    node_id: NodeId
    device: DeviceName
    seq: int = Field(ge=0)
    frame_event_id: str = Field(max_length=64, description="id of the frame-ready event indexed")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    indexed_by: NodeId


class FrameLatest(Payload):
    """The newest frame of one camera, relayed by a proxy node at a bounded rate (``frame.<node>.<device>.latest``).

    Lightweight and lossy (fan-out, not durable): a viewer follows ``frame.*.*.latest`` and gets at most one
    event per camera per ``THATDAM_PROXY_INTERVAL``, never a backlog. ``skipped`` counts the frames coalesced
    into this one since the previous relay.
    """

    event_type = "thatdam.frame.latest.v1"
    node_id: NodeId
    device: DeviceName
    seq: int = Field(ge=0)
    captured_at: datetime
    width: int = Field(gt=0, le=16384)
    height: int = Field(gt=0, le=16384)
    uri: str = Field(max_length=1024)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)
    frame_event_id: str = Field(max_length=64, description="id of the frame-ready event relayed")
    relayed_by: NodeId
    skipped: int = Field(default=0, ge=0, description="frames of this camera coalesced since the last relay")
