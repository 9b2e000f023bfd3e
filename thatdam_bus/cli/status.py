"""``thatdam status``: who leads, at which epoch, and who is alive, read off the bus (no registry server).

Heartbeats also carry health figures (dead letters in the last minute, outbox depth, durable queues without
consumers): the table sums them into one ``health:`` line and shows them per node. A node that does not report a
figure makes the sum unknown, never 0.

A node only sees its own queues, and a dead node reports nothing, so on RabbitMQ status also asks the broker
itself (passive declares: no management plugin) about every durable queue the installed services declare: the
shared ones (``<prefix>.indexer.index``) and the per-node ones of the nodes heard from. A queue whose only
consumer died is listed with its message count. Per-node queues of a node no longer heard from are not known.

It listens to heartbeats and leader announcements for a short window (a few heartbeat intervals), which is
exactly what a leader's registry view does, then prints one table (or ``--json``). Works against RabbitMQ and
against a solo node's embedded broker.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from thatdam_bus.cli.logs import configure_logging
from thatdam_bus.config import load_settings
from thatdam_bus.envelope import decode_raw
from thatdam_bus.errors import ContractError
from thatdam_bus.events.node import NodeHeartbeat
from thatdam_bus.topics import Patterns
from thatdam_bus.transports import connect_tool_transport
from thatdam_bus.transports.base import ACK, Delivery, Outcome, QueueKind, QueueSpec, Transport

if TYPE_CHECKING:
    from thatdam_bus.transports.amqp import QueueFigures

log = logging.getLogger("thatdam_bus.cli.status")


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

    def document(self, queues: dict[str, QueueFigures] | None = None) -> dict[str, Any]:
        """``queues``: what the broker says of the durable queues (``broker_queues``), None if not asked."""
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
            "health": health_summary(members, queues),
        }


def health_summary(members: list[dict[str, Any]], queues: dict[str, QueueFigures] | None = None) -> dict[str, Any]:
    """The cluster's figures: dead letters in the last minute and held events summed over the nodes (None,
    unknown, when a node does not report one, or no node was heard), and the durable queues without consumer
    with their messages: the broker's answer when it was asked (it is newer than any heartbeat), else the
    queues the nodes reported (messages unknown)."""
    if queues is None:
        reported = {q for m in members for q in m["queues_without_consumers"]}
        idle = [{"queue": q, "messages": None} for q in sorted(reported)]
    else:
        idle = [{"queue": q, "messages": f.messages} for q, f in sorted(queues.items()) if f.consumers == 0]
    return {"dead_letters_1m": _total(members, "dead_letters_1m"), "outbox_depth": _total(members, "outbox_depth"),
            "queues_without_consumers": idle, "queues_checked_on_broker": queues is not None}


def _total(members: list[dict[str, Any]], figure: str) -> int | None:
    values = [m[figure] for m in members]
    return None if not values or None in values else sum(values)


def durable_queues(prefix: str, node_ids: Iterable[str]) -> set[str]:
    """Every durable queue the installed services declare: shared ones once, per-node ones for ``node_ids``."""
    from thatdam_bus.node.services import discover_services
    from thatdam_bus.transports.amqp_topology import Topology

    handlers = [h for service in discover_services() for h in service.handlers if h.queue.kind is QueueKind.DURABLE]
    specs = [h.queue for h in handlers if not h.per_node]
    specs += [h.queue_for(node_id) for h in handlers if h.per_node for node_id in node_ids]
    return {Topology(prefix).queue_name(spec) for spec in specs}


async def broker_queues(transport: Transport, prefix: str, view: StatusView) -> dict[str, QueueFigures] | None:
    """The durable queues of ``durable_queues`` and those the nodes reported, as RabbitMQ sees them now; None
    when it cannot be asked (a solo node's socket) or does not answer."""
    queue_figures = getattr(transport, "queue_figures", None)
    if queue_figures is None:
        return None
    reported = {q for beat, _ in view.beats.values() for q in beat.queues_without_consumers}
    try:
        figures: dict[str, QueueFigures] = await queue_figures(sorted(durable_queues(prefix, view.beats) | reported))
        return figures
    except Exception as exc:
        log.warning("could not ask RabbitMQ about the durable queues: %r", exc)
        return None


def render_table(document: dict[str, Any]) -> str:
    health = document["health"]
    idle = ", ".join(q["queue"] + ("" if q["messages"] is None else f" ({q['messages']} messages)")
                     for q in health["queues_without_consumers"])
    idle = idle or ("none" if health["queues_checked_on_broker"] else "none reported")
    lines = [f"leader: {document['leader'] or '(none seen)'}   epoch: {document['epoch']}",
             f"health: {_known(health['dead_letters_1m'])} dead letters in the last minute, "
             f"{_known(health['outbox_depth'])} events held in outboxes, queues without consumers: {idle}"]
    lines.append(f"{'NODE':38} {'ROLE':7} {'EPOCH':>5} {'AGE':>6} {'DL/1m':>5} {'HELD':>5}  DEVICES")
    for m in document["members"]:
        lines.append(f"{m['node_id']:38} {m['role']:7} {m['epoch']:>5} {m['last_heartbeat_s']:>5.1f}s "
                     f"{_figure(m['dead_letters_1m']):>5} {_figure(m['outbox_depth']):>5}  "
                     f"{','.join(m['devices']) or '-'}")
    return "\n".join(lines)


def _figure(value: int | None) -> str:
    return "-" if value is None else str(value)


def _known(value: int | None) -> str:
    return "unknown" if value is None else str(value)


async def status(args: argparse.Namespace) -> int:
    settings = load_settings()
    window = args.window if args.window is not None else 2.5 * settings.heartbeat_interval
    view = StatusView()
    transport = await connect_tool_transport(settings)
    async with transport:
        await transport.subscribe(QueueSpec(patterns=(Patterns.HEARTBEATS,), prefetch=256), view.on_delivery)
        await asyncio.sleep(window)  # the listening window is the measurement itself, not a wait for a result
        queues = await broker_queues(transport, settings.prefix, view)
    document = view.document(queues)
    print(orjson.dumps(document).decode() if args.json else render_table(document))
    return 0 if document["members"] else 3


def run_status(args: argparse.Namespace) -> int:
    configure_logging("WARNING")
    return asyncio.run(status(args))
