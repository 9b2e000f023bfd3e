"""Callable type aliases used across modules, in one place."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from thatdam_bus.config import Settings
    from thatdam_bus.context import HandlerContext, TaskContext
    from thatdam_bus.envelope import Envelope

HandlerFn = Callable[["Envelope[Any]", "HandlerContext"], Awaitable[None]]
"""A handler: one typed event plus an explicit context; returning acks, ``Reject``/``Retry`` decide otherwise."""

TaskFn = Callable[["TaskContext"], Awaitable[None]]
"""A service's background task (e.g. a capture loop): runs while the service's role is active, cancelled after."""

StateFactory = Callable[["Settings"], Any]
"""Makes a service's per-node state object from the node's settings."""

Clock = Callable[[], float]
"""A monotonic clock (seconds); injected so liveness and lease logic can be tested without waiting."""

EpochSource = Callable[[], int]
"""Returns the newest leader epoch this process knows, stamped on every envelope it sends."""
