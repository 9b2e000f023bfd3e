"""Building this node's heartbeat payload from what the process can see about itself."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from thatdam_bus.events.node import Capabilities, NodeHeartbeat, Role
from thatdam_bus.types import Clock


def package_version() -> str:
    try:
        return version("thatdam-bus")
    except PackageNotFoundError:
        return "0+unknown"


class HeartbeatSource:
    """Makes heartbeats for one node; ``role``/``epoch`` are read at each beat so changes show at once."""

    def __init__(self, node_id: str, *, services: list[str], devices: list[str], interval_s: float,
                 clock: Clock = time.monotonic) -> None:
        self.node_id = node_id
        self.hostname = socket.gethostname()[:256]
        self.capabilities = Capabilities(devices=devices, services=services)
        self.interval_s = interval_s
        self.version = package_version()
        self._clock = clock
        self._started = clock()

    def beat(self, role: Role, epoch: int, health: Mapping[str, Any] | None = None) -> NodeHeartbeat:
        """``health``: the optional figures (``dead_letters_1m``, ``outbox_depth``, ...) to report."""
        return NodeHeartbeat(
            node_id=self.node_id,
            hostname=self.hostname,
            role=role,
            epoch=epoch,
            capabilities=self.capabilities,
            version=self.version,
            uptime_s=max(0.0, self._clock() - self._started),
            load=os.getloadavg()[0],
            interval_s=self.interval_s,
            **(health or {}),
        )
