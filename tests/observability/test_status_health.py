"""``thatdam status``'s health summary: a figure some node does not report is unknown, never 0; and a durable
queue whose only consumer died is found on the broker itself (no management plugin), with its messages, while a
queue that is consumed is not listed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.frames_bus.support import start_node
from tests.nodes import BIN, node_env
from tests.support import queue_until
from thatdam_bus.cli.status import StatusView, render_table
from thatdam_bus.events.node import NodeHeartbeat, Role
from thatdam_bus.transports.amqp import AmqpTransport, QueueFigures


def beat(node_id: str, **health: object) -> NodeHeartbeat:
    return NodeHeartbeat(node_id=node_id, hostname="h", role=Role.WORKER, epoch=2, version="0", uptime_s=1.0,
                         load=0.0, interval_s=1.0, **health)


def view_of(*beats: NodeHeartbeat) -> StatusView:
    view = StatusView()
    for b in beats:
        view.beats[b.node_id] = (b, time.monotonic())
    return view


def test_a_figure_a_node_does_not_report_makes_the_sum_unknown_not_zero() -> None:
    view = view_of(beat("a", dead_letters_1m=2, outbox_depth=5), beat("b"))
    document = view.document()
    assert document["health"]["dead_letters_1m"] is None and document["health"]["outbox_depth"] is None
    table = render_table(document)
    health_line = table.splitlines()[1]
    assert health_line == ("health: unknown dead letters in the last minute, unknown events held in outboxes, "
                           "queues without consumers: none reported")
    row_b = next(line for line in table.splitlines() if line.startswith("b "))
    assert row_b.split()[4:6] == ["-", "-"], row_b

    both = view_of(beat("a", dead_letters_1m=2, outbox_depth=5), beat("b", dead_letters_1m=1, outbox_depth=0))
    assert render_table(both.document()).splitlines()[1].startswith(
        "health: 3 dead letters in the last minute, 5 events held in outboxes")
    assert StatusView().document()["health"]["dead_letters_1m"] is None, "no node heard: unknown"


def test_queues_without_consumers_come_from_the_broker_when_it_was_asked() -> None:
    view = view_of(beat("a", dead_letters_1m=0, outbox_depth=0, queues_without_consumers=["p.capture.start.a"]),
                   beat("b", dead_letters_1m=0, outbox_depth=0))
    from_beats = view.document()["health"]
    assert from_beats["queues_without_consumers"] == [{"queue": "p.capture.start.a", "messages": None}]
    assert not from_beats["queues_checked_on_broker"]

    broker = {"p.capture.start.a": QueueFigures(0, 1), "p.indexer.index": QueueFigures(4, 0),
              "p.capture.stop.b": QueueFigures(0, 0)}
    document = view.document(broker)
    assert document["health"]["queues_without_consumers"] == [
        {"queue": "p.capture.stop.b", "messages": 0}, {"queue": "p.indexer.index", "messages": 4}]
    assert render_table(document).splitlines()[1].endswith(
        "queues without consumers: p.capture.stop.b (0 messages), p.indexer.index (4 messages)")
    assert render_table(view_of().document({})).splitlines()[1].endswith("queues without consumers: none")


async def test_status_lists_a_queue_whose_only_consumer_died_with_its_messages(
    cluster_env: dict[str, str], amqp_cleanup: Callable[[str], None], rabbitmq: str, prefix: str, tmp_path: Path
) -> None:
    indexed, consumed = f"{prefix}.indexer.index", f"{prefix}.capture.start.alive"
    for queue in (indexed, consumed, f"{prefix}.capture.stop.alive"):
        amqp_cleanup(queue)
    env = {**cluster_env, "THATDAM_ROLE": "worker"}
    dying = start_node(tmp_path / "dying", "dying", **env, THATDAM_SERVICES="indexer")
    alive = start_node(tmp_path / "alive", "alive", **env, THATDAM_SERVICES="capture")
    try:
        await queue_until(rabbitmq, indexed, lambda _m, consumers: consumers == 1)
        await queue_until(rabbitmq, consumed, lambda _m, consumers: consumers == 1)
        dying.kill()
        async with AmqpTransport(rabbitmq, prefix=prefix) as transport:
            for n in range(3):
                await transport.publish("frame.gone.cam0.ready", b"frame %d" % n, durable=True)
        await queue_until(rabbitmq, indexed, lambda messages, consumers: (messages, consumers) == (3, 0))

        run = await asyncio.to_thread(subprocess.run, [str(BIN / "thatdam"), "status", "--json"],
                                      env=node_env(tmp_path / "tool", **cluster_env), capture_output=True,
                                      text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        document = json.loads(run.stdout)
        assert [m["node_id"] for m in document["members"]] == ["alive"]
        assert document["health"]["queues_checked_on_broker"]
        assert document["health"]["queues_without_consumers"] == [{"queue": indexed, "messages": 3}]
    finally:
        alive.kill()
        dying.kill()
