"""Computing a node's role from facts, never from hand configuration (architecture section 5).

A pure function so every transition is testable without a broker: the infrastructure in reach, whether this node
holds the lease, whether it has capture devices, and an optional operator pin.
"""

from __future__ import annotations

from dataclasses import dataclass

from thatdam_bus.events.node import Role


@dataclass(frozen=True)
class RoleFacts:
    """What the role depends on. ``pinned`` is ``THATDAM_ROLE`` (``auto`` when not pinned)."""

    infrastructure: bool
    holds_lease: bool
    has_devices: bool
    pinned: str = "auto"


def compute_role(facts: RoleFacts) -> Role:
    """``solo`` without infrastructure; else ``leader`` with the lease; else ``worker`` with devices, else
    ``proxy``. A pin of ``worker``/``proxy`` is honoured whenever the node is in a cluster; a pin of ``leader``
    only makes the node contest the lease (leadership is never configured, only won); ``solo`` keeps it alone."""
    if facts.pinned == Role.SOLO or not facts.infrastructure:
        return Role.SOLO
    if facts.holds_lease:
        return Role.LEADER
    if facts.pinned in (Role.WORKER, Role.PROXY):
        return Role(facts.pinned)
    return Role.WORKER if facts.has_devices else Role.PROXY


def contests_lease(pinned: str) -> bool:
    """Nodes pinned to ``worker``, ``proxy`` or ``solo`` never try to lead."""
    return pinned in ("auto", Role.LEADER)
