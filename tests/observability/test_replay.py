"""``bus-tail --since 1m``: events published before it started come first, in publish order, then live ones,
with no gap and no duplicate at the seam (a pump keeps publishing numbered events while bus-tail starts);
on a solo node (the ring in its state directory) and on RabbitMQ (the leader's stream), and again after the
node that keeps or declared the recorder restarted."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.nodes import NodeProcess, node_env
from tests.observability.support import (
    KEY,
    Numbered,
    amqp_publisher,
    history_then_live,
    last_then_live,
    leader,
    recorded,
    seq_body,
    socket_publisher,
    solo,
    stream_declared,
)
from tests.tools.tail_process import TailProcess
from thatdam_bus.recorder.amqp_stream import stream_name
from thatdam_bus.transports.amqp import AmqpTransport
from thatdam_bus.transports.batching import BatchPolicy


async def test_solo_history_then_live_without_gap_or_duplicate(solo_node: NodeProcess) -> None:
    numbered = Numbered()
    transport, publish = await socket_publisher(solo_node.state_dir)
    async with transport:
        printed = await history_then_live(node_env(solo_node.state_dir), publish, numbered)
    assert printed.seqs == list(range(numbered.sent)) and printed.live > 0


async def test_solo_replay_after_the_node_restarts(state_dir: Path) -> None:
    numbered = Numbered()
    node = solo(state_dir)
    try:
        transport, publish = await socket_publisher(state_dir)
        async with transport:
            await numbered.publish(publish, 15)
        await recorded(state_dir, KEY, 15)
    finally:
        node.kill()  # SIGKILL: what was recorded must survive the process
    node = solo(state_dir)
    try:
        transport, publish = await socket_publisher(state_dir)
        async with transport:
            printed = await history_then_live(node_env(state_dir), publish, numbered, history=5)
    finally:
        node.kill()
    assert printed.seqs == list(range(numbered.sent)) and printed.seqs[:15] == list(range(15)) and printed.live > 0


async def test_rabbitmq_history_then_live_without_gap_or_duplicate(cluster_env: dict[str, str], prefix: str,
                                                                   rabbitmq: str, state_dir: Path) -> None:
    node = leader(state_dir, cluster_env)
    try:
        await stream_declared(rabbitmq, stream_name(prefix))
        numbered = Numbered()
        transport, publish = await amqp_publisher(rabbitmq, prefix)
        async with transport:
            printed = await history_then_live(node_env(state_dir.parent / "tail", **cluster_env), publish, numbered)
    finally:
        node.kill()
    assert printed.seqs == list(range(numbered.sent)) and printed.live > 0


async def test_rabbitmq_replay_after_the_declaring_node_restarts(cluster_env: dict[str, str], prefix: str,
                                                                 rabbitmq: str, state_dir: Path) -> None:
    numbered = Numbered()
    transport, publish = await amqp_publisher(rabbitmq, prefix)
    async with transport:
        node = leader(state_dir, cluster_env)
        try:
            await stream_declared(rabbitmq, stream_name(prefix))
            await numbered.publish(publish, 15)
        finally:
            node.kill()
        node = leader(state_dir, cluster_env)  # declares again: idempotent, the history stays
        try:
            printed = await history_then_live(node_env(state_dir.parent / "tail", **cluster_env), publish, numbered,
                                              history=5)
        finally:
            node.kill()
    assert printed.seqs == list(range(numbered.sent)) and printed.seqs[:15] == list(range(15)) and printed.live > 0


async def test_last_n_and_from_start_on_rabbitmq(cluster_env: dict[str, str], prefix: str, rabbitmq: str,
                                                 state_dir: Path) -> None:
    """``--last 5`` counts the events that pass the pattern (heartbeats share the stream), then goes live;
    ``--from-start`` replays everything, across the seam with the pump running."""
    node = leader(state_dir, cluster_env)
    try:
        await stream_declared(rabbitmq, stream_name(prefix))
        numbered = Numbered()
        transport, publish = await amqp_publisher(rabbitmq, prefix)
        async with transport:
            await numbered.publish(publish, 30)
            env = node_env(state_dir.parent / "tail", **cluster_env)
            last, live = await last_then_live(env, publish, numbered)
            everything = await history_then_live(env, publish, numbered, history=0, live=10, args=("--from-start",))
    finally:
        node.kill()
    assert (last, live) == ([25, 26, 27, 28, 29], [30, 31, 32])
    assert everything.seqs == list(range(numbered.sent)) and everything.live > 0


async def test_batched_events_replay_one_by_one_from_the_stream(cluster_env: dict[str, str], prefix: str,
                                                                rabbitmq: str, state_dir: Path) -> None:
    """A high-rate channel publishes several events per AMQP message (``BatchPolicy``); the stream keeps the
    batch messages as they are, and ``bus-tail --from-start`` must show every event, in order, not the batches."""
    node = leader(state_dir, cluster_env)
    try:
        await stream_declared(rabbitmq, stream_name(prefix))
        run = Numbered().run
        batched = AmqpTransport(rabbitmq, prefix=prefix, batch=BatchPolicy(("capture.obs.#",), max_events=8))
        async with batched:
            await asyncio.gather(*(batched.publish(KEY, seq_body(seq, run)) for seq in range(30)))
            assert batched.batcher is not None and batched.batcher.batches_sent < 30
        tail = await TailProcess.start(node_env(state_dir.parent / "tail", **cluster_env), "capture.obs.#",
                                       "--from-start")
        try:
            printed = [(await tail.next_record())["event"]["data"]["seq"] for _ in range(30)]
        finally:
            await tail.kill()
    finally:
        node.kill()
    assert printed == list(range(30))
