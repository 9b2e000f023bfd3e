"""Callable type aliases used across modules, in one place."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from thatdam_bus.context import HandlerContext
    from thatdam_bus.envelope import Envelope

HandlerFn = Callable[["Envelope[Any]", "HandlerContext"], Awaitable[None]]
"""A handler: one typed event plus an explicit context; returning acks, ``Reject``/``Retry`` decide otherwise."""

Clock = Callable[[], float]
"""A monotonic clock (seconds); injected so liveness and lease logic can be tested without waiting."""

EpochSource = Callable[[], int]
"""Returns the newest leader epoch this process knows, stamped on every envelope it sends."""
