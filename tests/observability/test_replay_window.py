"""Where ``bus-tail`` starts its replay, through the CLI: ``--since D`` leaves out what the recorder stored before
the window (on the solo ring and on the RabbitMQ stream), and ``--last N`` and ``--from-start`` on the solo ring;
each then goes live with no gap and no duplicate at the seam (``support.history_then_live``)."""

from __future__ import annotations

from pathlib import Path

from tests.nodes import NodeProcess, node_env
from tests.observability.support import (
    KEY,
    Numbered,
    amqp_publisher,
    history_then_live,
    just_past_a_whole_second,
    last_then_live,
    leader,
    recorded,
    socket_publisher,
    stream_declared,
    window_passed,
)
from thatdam_bus.recorder.amqp_stream import stream_name

WINDOW_S = 2.0
SINCE = ("--since", "2s")
EARLY = 10
"""Events stored before the window: none of them may be printed."""


async def test_solo_since_leaves_out_what_the_ring_recorded_before_the_window(solo_node: NodeProcess) -> None:
    """The ring knows when it recorded each entry: events recorded more than 2 s before bus-tail started are
    left out, the ones recorded just before it are replayed, then live ones follow."""
    numbered = Numbered()
    transport, publish = await socket_publisher(solo_node.state_dir)
    async with transport:
        await numbered.publish(publish, EARLY)
        await recorded(solo_node.state_dir, KEY, EARLY)
        await window_passed(WINDOW_S)
        printed = await history_then_live(node_env(solo_node.state_dir), publish, numbered, history=10, args=SINCE)
    assert printed.seqs == list(range(EARLY, numbered.sent)) and printed.live > 0


async def test_rabbitmq_since_leaves_out_what_the_stream_stored_before_the_window(
        cluster_env: dict[str, str], prefix: str, rabbitmq: str, state_dir: Path) -> None:
    """The stream's timestamp offset has a resolution of one second: bus-tail attaches at the first chunk stored
    in the second of its ``--since`` instant. The early events are stored just after a whole second and bus-tail
    starts less than a second after the window has passed, so it attaches at their chunk, and it is replay's skip
    of the leading envelopes older than the instant that leaves them out."""
    node = leader(state_dir, cluster_env)
    try:
        await stream_declared(rabbitmq, stream_name(prefix))
        numbered = Numbered()
        transport, publish = await amqp_publisher(rabbitmq, prefix, confirmed=True)
        async with transport:
            await just_past_a_whole_second()
            await numbered.publish(publish, EARLY)
            await window_passed(WINDOW_S)
            printed = await history_then_live(node_env(state_dir.parent / "tail", **cluster_env), publish, numbered,
                                              history=10, args=SINCE)
    finally:
        node.kill()
    assert printed.seqs == list(range(EARLY, numbered.sent)) and printed.live > 0


async def test_solo_last_n_then_live(solo_node: NodeProcess) -> None:
    """``--last 5`` on the ring: exactly the last five matching events (the node's heartbeats share the ring and
    do not count), then live. Again with the pump racing bus-tail's start: its seam falls somewhere among the
    pump's events, so the first one printed is five before it, and nothing is missed or repeated from there."""
    numbered = Numbered()
    env = node_env(solo_node.state_dir)
    transport, publish = await socket_publisher(solo_node.state_dir)
    async with transport:
        await numbered.publish(publish, 30)
        await recorded(solo_node.state_dir, KEY, 30)
        last, live = await last_then_live(env, publish, numbered)
        raced = await history_then_live(env, publish, numbered, history=0, args=("--last", "5"))
    assert (last, live) == ([25, 26, 27, 28, 29], [30, 31, 32])
    assert raced.seqs == list(range(raced.seqs[0], numbered.sent)) and raced.live > 0
    assert 33 - 5 <= raced.seqs[0] <= raced.attached - 5  # the seam: at least the 33 recorded, at most all sent


async def test_solo_from_start_then_live(solo_node: NodeProcess) -> None:
    """``--from-start`` on the ring: everything it holds, from the first event recorded, then live."""
    numbered = Numbered()
    transport, publish = await socket_publisher(solo_node.state_dir)
    async with transport:
        await numbered.publish(publish, EARLY)
        await recorded(solo_node.state_dir, KEY, EARLY)
        printed = await history_then_live(node_env(solo_node.state_dir), publish, numbered, history=10,
                                          args=("--from-start",))
    assert printed.seqs == list(range(numbered.sent)) and printed.live > 0
