"""``thatdam status``: who leads, at which epoch, and who is alive, read off the bus (no registry server).

Heartbeats also carry health figures (dead letters in the last minute, outbox depth, durable queues without
consumers): the table sums them into one ``health:`` line and shows them per node.

It listens to heartbeats and leader announcements for a short window (a few heartbeat intervals), which is
exactly what a leader's registry view does, then prints one table (or ``--json``). Works against RabbitMQ and
against a solo node's embedded broker.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from thatdam_bus.cli.logs import configure_logging
from thatdam_bus.config import load_settings
from thatdam_bus.envelope import decode_raw
from thatdam_bus.errors import ContractError
from thatdam_bus.events.node import NodeHeartbeat
from thatdam_bus.topics import Patterns
from thatdam_bus.transports import connect_tool_transport
from thatdam_bus.transports.base import ACK, Delivery, Outcome, QueueSpec


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--window", type=float, default=None,
                        help="seconds to listen (default: 2.5 heartbeat intervals)")


@dataclass
class StatusView:
    """Heartbeats folded by node; the leader is the node claiming ``leader`` at the highest epoch."""

    started: float = field(default_factory=time.monotonic)
    beats: dict[str, tuple[NodeHeartbeat, float]] = field(default_factory=dict)

    async def on_delivery(self, delivery: Delivery) -> Outcome:
        try:
            raw = decode_raw(delivery.body)
            beat = NodeHeartbeat.model_validate(raw.data)
        except (ContractError, ValueError):
            return ACK
        self.beats[beat.node_id] = (beat, time.monotonic())
        return ACK

    def document(self) -> dict[str, Any]:
        now = time.monotonic()
        leaders = [b for b, _ in self.beats.values() if b.role == "leader"] or [
            b for b, _ in self.beats.values() if b.role == "solo"]  # a solo node leads its cluster of one
        leader = max(leaders, key=lambda b: b.epoch, default=None)
        members = [
            {"node_id": b.node_id, "hostname": b.hostname, "role": b.role, "epoch": b.epoch,
             "last_heartbeat_s": round(now - seen, 3), "devices": list(b.capabilities.devices),
             "services": list(b.capabilities.services), "uptime_s": round(b.uptime_s, 1), "load": b.load,
             "dead_letters_1m": b.dead_letters_1m, "outbox_depth": b.outbox_depth,
             "queues_without_consumers": list(b.queues_without_consumers)}
            for b, seen in sorted(self.beats.values(), key=lambda item: item[0].node_id)
        ]
        return {
            "leader": leader.node_id if leader else None,
            "epoch": max((b.epoch for b, _ in self.beats.values()), default=0),
            "members": members,
            "health": health_summary(members),
        }


def health_summary(members: list[dict[str, Any]]) -> dict[str, Any]:
    """The cluster's figures from its heartbeats: dead letters in the last minute and held events (summed over
    the nodes that report them), and the durable queues some node consumes that have no consumer."""
    return {
        "dead_letters_1m": sum(m["dead_letters_1m"] or 0 for m in members),
        "outbox_depth": sum(m["outbox_depth"] or 0 for m in members),
        "queues_without_consumers": sorted({q for m in members for q in m["queues_without_consumers"]}),
    }


def render_table(document: dict[str, Any]) -> str:
    health = document["health"]
    idle = ", ".join(health["queues_without_consumers"]) or "none"
    lines = [f"leader: {document['leader'] or '(none seen)'}   epoch: {document['epoch']}",
             f"health: {health['dead_letters_1m']} dead letters in the last minute, {health['outbox_depth']} "
             f"events held in outboxes, queues without consumers: {idle}"]
    lines.append(f"{'NODE':38} {'ROLE':7} {'EPOCH':>5} {'AGE':>6} {'DL/1m':>5} {'HELD':>5}  DEVICES")
    for m in document["members"]:
        lines.append(f"{m['node_id']:38} {m['role']:7} {m['epoch']:>5} {m['last_heartbeat_s']:>5.1f}s "
                     f"{_figure(m['dead_letters_1m']):>5} {_figure(m['outbox_depth']):>5}  "
                     f"{','.join(m['devices']) or '-'}")
    return "\n".join(lines)


def _figure(value: int | None) -> str:
    return "-" if value is None else str(value)


async def status(args: argparse.Namespace) -> int:
    settings = load_settings()
    window = args.window if args.window is not None else 2.5 * settings.heartbeat_interval
    view = StatusView()
    transport = await connect_tool_transport(settings)
    async with transport:
        await transport.subscribe(QueueSpec(patterns=(Patterns.HEARTBEATS,), prefetch=256), view.on_delivery)
        await asyncio.sleep(window)  # the listening window is the measurement itself, not a wait for a result
    document = view.document()
    print(orjson.dumps(document).decode() if args.json else render_table(document))
    return 0 if document["members"] else 3


def run_status(args: argparse.Namespace) -> int:
    configure_logging("WARNING")
    return asyncio.run(status(args))
