"""thatdam-bus: event-bus choreography for small camera/media clusters.

The public API for handlers and scripts. Everything else is internal and may change. Besides the names in
``__all__``, the ``topics`` module is public: its builders are the only way to spell a routing key.
"""

import typing

from thatdam_bus import topics as topics
from thatdam_bus.client import Client, publish_intent
from thatdam_bus.config import Settings, load_settings
from thatdam_bus.context import HandlerContext, TaskContext
from thatdam_bus.envelope import Envelope, Payload
from thatdam_bus.errors import (
    ConfigError,
    ContractError,
    IntentError,
    IntentRejected,
    IntentTimeout,
    OutboxFull,
    PublishRefused,
    Reject,
    Retry,
    ThatdamError,
    TransportError,
    TransportUnavailable,
)
from thatdam_bus.events import (
    CaptureFailed,
    CaptureStarted,
    CaptureStartIntent,
    CaptureStopIntent,
    CaptureStopped,
    FrameIndexed,
    FrameLatest,
    FrameReady,
    IntentResult,
    IntentStatus,
    LeaderElected,
    LeaderLost,
    LeaderResigned,
    NodeHeartbeat,
    NodeJoined,
    NodeLeft,
    NodeLost,
    NodeRoleChanged,
    Role,
)
from thatdam_bus.membership import MembershipView
from thatdam_bus.publisher import Bus
from thatdam_bus.service import Service
from thatdam_bus.topics import Patterns
from thatdam_bus.transports.base import QueueKind

if typing.TYPE_CHECKING:
    from thatdam_bus.frames import (
        Backoff,
        BlobStore,
        CaptureConfig,
        CaptureLoop,
        Sampling,
        SourceError,
        parse_source,
    )

_FRAMES_NAMES = frozenset({"Backoff", "BlobStore", "CaptureConfig", "CaptureLoop", "Sampling", "SourceError",
                           "parse_source"})


def __getattr__(name: str) -> object:
    """The frames names load PyAV (about 29 MB resident) on first use, not on ``import thatdam_bus``: a node
    without cameras, ``bus-tail`` and a script that publishes intents need not carry it (PEP 562)."""
    if name in _FRAMES_NAMES:
        from thatdam_bus import frames

        return getattr(frames, name)
    raise AttributeError(f"module 'thatdam_bus' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_FRAMES_NAMES])

__all__ = [
    "Backoff",
    "BlobStore",
    "Bus",
    "CaptureConfig",
    "CaptureFailed",
    "CaptureLoop",
    "CaptureStartIntent",
    "CaptureStarted",
    "CaptureStopIntent",
    "CaptureStopped",
    "Client",
    "ConfigError",
    "ContractError",
    "Envelope",
    "FrameIndexed",
    "FrameLatest",
    "FrameReady",
    "HandlerContext",
    "IntentError",
    "IntentRejected",
    "IntentResult",
    "IntentStatus",
    "IntentTimeout",
    "LeaderElected",
    "LeaderLost",
    "LeaderResigned",
    "MembershipView",
    "NodeHeartbeat",
    "NodeJoined",
    "NodeLeft",
    "NodeLost",
    "NodeRoleChanged",
    "OutboxFull",
    "Patterns",
    "Payload",
    "PublishRefused",
    "QueueKind",
    "Reject",
    "Retry",
    "Role",
    "Sampling",
    "Service",
    "Settings",
    "SourceError",
    "TaskContext",
    "ThatdamError",
    "TransportError",
    "TransportUnavailable",
    "load_settings",
    "parse_source",
    "publish_intent",
]
