"""Membership at scale: 1,000 simulated nodes heartbeating at 1 Hz into one real registry (the leader's view).

    .venv/bin/python bench/membership_bench.py [--nodes 1000] [--lose 50] [--seconds 20]

The registry is a real ``thatdam up`` process on RabbitMQ + Redis (a unique ``bench-members-*`` prefix, default
settings: heartbeat 1 s), alone, so it wins the lease and its membership service folds every heartbeat into its
``MembershipView`` and reports silent members as ``node.<id>.lost``. This process simulates the nodes: one
``AmqpTransport`` and, per simulated node, its own ``Bus`` (so the envelope's ``source`` names it) and
``HeartbeatSource`` (the payload a real node sends), each node beating once a second at its own phase (the
1,000 spread evenly over the second), stamped with the registry's epoch (so the registry never re-announces its
term at them). An aio-pika consumer bound to ``node.*.lost`` sees the registry's reports.

Figures (no baseline exists for these; each "baseline" below is the row's budget, ratio = value / budget):
1. view correct: every simulated node is in the registry's ``cluster.json`` ``members`` after the ramp, still
   after the window (no false loss), and after the loss only the survivors are (value: members present /
   expected, target 1x);
2. lost nodes flagged: ``--lose`` nodes (spread over the phases) stop; each one's time from its last heartbeat
   sent to the receipt of its ``node.<id>.lost``; max <= 3 intervals + 1 s = 4 s;
3. registry CPU: the registry process's CPU time (``/proc/<pid>/stat``, every thread) over the steady window of
   ``--seconds``, as % of one core; <= 30 %.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from common import AMQP_URL, Row, command_line, percentile, unique_prefix
from nodes import EventLog, Node, cleanup, cluster_env, cpu_seconds, finish, stop_all, wait_until

from thatdam_bus import topics
from thatdam_bus.events.node import Role
from thatdam_bus.node.cluster_file import read_cluster_file
from thatdam_bus.node.heartbeat import HeartbeatSource
from thatdam_bus.publisher import Bus
from thatdam_bus.transports.amqp import AmqpTransport

INTERVAL_S = 1.0
TICK_S = 0.01
LOST_BUDGET_S = 3 * INTERVAL_S + 1.0
CPU_BUDGET_PCT = 30.0
ELECTED = re.compile(r"elected leader at epoch (\d+)")


@dataclass
class Simulated:
    node_id: str
    bus: Bus
    source: HeartbeatSource
    last_sent: float = 0.0
    beats: int = 0


@dataclass
class Swarm:
    """Simulated nodes over one transport, beating at 1 Hz each until stopped one by one."""

    transport: AmqpTransport
    epoch: int
    nodes: list[Simulated] = field(default_factory=list)
    stopped: set[int] = field(default_factory=set)
    late_ticks: int = 0

    def add(self, count: int) -> None:
        run = uuid.uuid4().hex[:6]
        for index in range(count):
            node_id = f"sim{index:04d}-{run}"
            bus = Bus(self.transport, cluster="default", node_id=node_id, epoch=lambda: self.epoch)
            source = HeartbeatSource(node_id, services=[], devices=["cam0"], interval_s=INTERVAL_S)
            self.nodes.append(Simulated(node_id, bus, source))

    async def run(self) -> None:
        """Every ``TICK_S``, the nodes whose phase it is beat (node i at i mod (1 s / tick))."""
        slots = round(INTERVAL_S / TICK_S)
        began = time.monotonic()
        for tick in range(1 << 62):
            due = began + tick * TICK_S
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -INTERVAL_S / 2:
                self.late_ticks += 1
            for index in range(tick % slots, len(self.nodes), slots):
                if index not in self.stopped:
                    await self.beat(self.nodes[index])

    async def beat(self, node: Simulated) -> None:
        payload = node.source.beat(Role.WORKER, self.epoch)
        await node.bus.publish(payload, topics.node_heartbeat(node.node_id))
        node.last_sent, node.beats = time.monotonic(), node.beats + 1

    def ids(self) -> set[str]:
        return {node.node_id for index, node in enumerate(self.nodes) if index not in self.stopped}


def members(registry: Node) -> set[str]:
    view = read_cluster_file(registry.state_dir)
    return set() if view is None else set(view.members)


async def main(args: argparse.Namespace) -> list[Row]:
    prefix = unique_prefix("members")
    print(f"{args.nodes} simulated nodes at 1 Hz into one registry, lose {args.lose}, prefix {prefix}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-members-") as tmp:
        log = EventLog(AMQP_URL, prefix, "node.*.lost")
        registry = Node(Path(tmp) / "registry", f"registry-{uuid.uuid4().hex[:8]}", cluster_env(AMQP_URL, prefix, 5))
        transport = AmqpTransport(AMQP_URL, prefix=prefix)
        try:
            await log.start()
            registry.start()
            await registry.wait_log("elected leader at epoch", timeout=30)
            epoch = int(ELECTED.findall(registry.log())[-1])
            await transport.start()
            swarm = Swarm(transport, epoch)
            swarm.add(args.nodes)
            async with asyncio.TaskGroup() as group:
                beating = group.create_task(swarm.run())
                try:
                    figures = await measure(args, registry, swarm, log)
                finally:
                    beating.cancel()
        finally:
            await transport.aclose()
            stop_all([registry])
            await log.aclose()
            await cleanup(AMQP_URL, prefix)
    return [finish(row) for row in rows_of(args, figures)]


async def measure(args: argparse.Namespace, registry: Node, swarm: Swarm, log: EventLog) -> dict[str, float]:
    """Ramp, steady window (CPU, view), loss (detection times, view); the figures."""
    began = time.monotonic()
    everyone = swarm.ids()
    await wait_until(lambda: everyone <= members(registry), 30, f"all {args.nodes} nodes in the registry's view",
                     poll=0.1)
    ramp_s = time.monotonic() - began
    cpu0, t0 = cpu_seconds(registry.pid), time.monotonic()
    await asyncio.sleep(args.seconds)  # the measurement window
    cpu1, t1 = cpu_seconds(registry.pid), time.monotonic()
    present_after_window = len(everyone & members(registry))
    false_lost = len(log.of("node.*.lost"))
    beats = sum(node.beats for node in swarm.nodes)
    lose = range(0, args.nodes, max(1, args.nodes // args.lose))[:args.lose]
    swarm.stopped.update(lose)
    stopped_at = time.monotonic()
    gone = {swarm.nodes[index].node_id: swarm.nodes[index].last_sent for index in lose}
    await wait_until(lambda: set(gone) <= {s.data["node_id"] for s in log.of("node.*.lost", stopped_at)},
                     LOST_BUDGET_S + 10, f"node.*.lost for all {len(gone)} stopped nodes", poll=0.05)
    reports = {s.data["node_id"]: s for s in reversed(log.of("node.*.lost", stopped_at)) if s.data["node_id"] in gone}
    detection = [reports[node_id].at - last for node_id, last in gone.items()]
    survivors = swarm.ids()
    await wait_until(lambda: members(registry) & everyone == survivors, 5, "the view to drop the lost nodes",
                     poll=0.05)
    wrongly_lost = {s.data["node_id"] for s in log.of("node.*.lost")} - set(gone)
    return {"ramp_s": ramp_s, "cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0), "window_s": t1 - t0,
            "present_after_window": present_after_window, "false_lost_in_window": false_lost,
            "wrongly_lost": len(wrongly_lost), "survivors_present": len(members(registry) & survivors),
            "survivors": len(survivors), "detect_max_s": max(detection), "detect_p50_s": percentile(detection, 50),
            "detect_min_s": min(detection), "lost_reported": len(reports), "late_ticks": swarm.late_ticks,
            "heartbeats_per_s": beats / (time.monotonic() - began)}


def rows_of(args: argparse.Namespace, f: dict[str, float]) -> list[Row]:
    extra = {**f, "nodes": args.nodes, "lose": args.lose, "load_average": os.getloadavg()}
    command = command_line()
    view_ok = f["present_after_window"] == args.nodes and f["survivors_present"] == f["survivors"] \
        and f["false_lost_in_window"] == 0 and f["wrongly_lost"] == 0
    return [
        Row("membership_view", f"Membership: {args.nodes} nodes at 1 Hz, registry view correct", command,
            "members present / expected", "nodes", args.nodes, f["present_after_window"],
            ">= 1x, and no false loss", view_ok, 1, extra=extra),
        Row("membership_lost", f"Membership: {args.lose} of {args.nodes} nodes stop, time to node.lost (max)",
            command, "seconds from the last heartbeat to node.<id>.lost received", "s", LOST_BUDGET_S,
            f["detect_max_s"], "<= 1x, i.e. max <= 3 intervals + 1 s", f["detect_max_s"] <= LOST_BUDGET_S, 1,
            extra=extra),
        Row("membership_cpu", f"Membership: registry process CPU at {args.nodes} heartbeats/s", command,
            "% of one core", "%", CPU_BUDGET_PCT, f["cpu_pct"], "<= 1x, i.e. <= 30 % of one core",
            f["cpu_pct"] <= CPU_BUDGET_PCT, 1, extra=extra),
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--lose", type=int, default=50, help="how many simulated nodes stop")
    parser.add_argument("--seconds", type=float, default=20.0, help="steady window for the CPU figure")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
