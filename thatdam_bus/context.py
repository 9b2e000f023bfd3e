"""What a handler may use besides its event: the bus to publish on, who it runs as, and how it was delivered."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from thatdam_bus.publisher import Bus


@dataclass(frozen=True)
class HandlerContext:
    """Explicit context passed to every handler (no dependency-injection magic)."""

    bus: Bus
    node_id: str
    routing_key: str
    attempt: int
    log: logging.Logger
    state: Any = None
    """The per-node state object of the handler's service (``Service(state=...)``), if it declared one."""
