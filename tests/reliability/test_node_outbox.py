"""A real ``thatdam up`` node whose RabbitMQ connection is cut (TCP proxy) keeps the frames it captures meanwhile
in its outbox and delivers them after the cut heals: every frame, once at least, in capture order.

The node captures a synthetic camera (``test://testsrc2``) and publishes durable ``frame.<node>.cam.ready``
events through the proxy; the test consumes them straight from the shared broker on its own durable queue. Frame
``seq`` numbers are consecutive per capture, so a lost frame is a gap and a reordering is a step back.
"""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from tests.nodes import NodeProcess
from tests.support import Collector, wait_until
from tests.tcp_proxy import TcpProxy
from thatdam_bus.node import session as session_module
from thatdam_bus.outbox import OUTBOX_FILE

SESSION_HOOKED = "bus.drain()" in inspect.getsource(session_module)
pytestmark = [
    pytest.mark.broker,
    pytest.mark.timeout(60),
    pytest.mark.skipif(not SESSION_HOOKED, reason="node/session.py does not run Bus.drain() nor give the Bus an "
                                                  "outbox yet (the hook lines are in the reliability notes)"),
]

HELD_DURING_CUT = 30  # about 3 s of frames at 10 per second


def held_in(state_dir: Path) -> int:
    """Events in the node's outbox, read from another process (WAL allows a concurrent reader)."""
    path = state_dir / OUTBOX_FILE
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
            return int(db.execute("SELECT count(*) FROM outbox").fetchone()[0])
    except sqlite3.Error:
        return 0  # removed (drained) between the check and the read, or not initialised yet


def seqs(got: Collector) -> list[int]:
    """Frame numbers in first-arrival order (a redelivered duplicate is not a step back)."""
    first = dict.fromkeys((d.headers.get("ce-id"), orjson.loads(d.body)["data"]["seq"]) for d in got.got)
    return [seq for _, seq in first]


async def test_frames_captured_during_a_cut_arrive_after_it_in_order(
    frames: tuple[Collector, str], prefix: str, state_dir: Path, figure: Callable[[str, object], None]
) -> None:
    got, node_id = frames
    (state_dir / "node_id").write_text(node_id + "\n")
    async with TcpProxy("127.0.0.1", 5672) as proxy:
        node = NodeProcess(state_dir, THATDAM_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{proxy.port}/",
                           THATDAM_PREFIX=prefix, THATDAM_SERVICES="capture", THATDAM_CAPTURE_FPS="10",
                           THATDAM_SOURCES="cam=test://testsrc2?size=160x120&rate=20",
                           THATDAM_LEASE_TTL="60", THATDAM_CONNECT_TIMEOUT="2")
        try:
            await got.wait_count(3, timeout=20)
            proxy.cut()
            cut_at = time.monotonic()
            await wait_until(lambda: held_in(state_dir) >= HELD_DURING_CUT, 20, "frames held while cut")
            before_heal = max(seqs(got))
            proxy.heal()
            figure("cut_s", round(time.monotonic() - cut_at, 2))
            await wait_until(lambda: not (state_dir / OUTBOX_FILE).exists() and max(seqs(got)) > before_heal + 15,
                             30, "the outbox drained and fresh frames flowing")
            assert await asyncio.to_thread(node.stop) == 0  # off the loop: the proxy lives on it
        finally:
            node.kill()
    arrived = seqs(got)
    figure("frames", len(arrived))
    assert arrived == list(range(arrived[0], arrived[-1] + 1)), f"gap or step back in {arrived}"
    log = node.log()
    assert "holding durable events in the outbox" in log and "outbox: forwarded" in log
    assert "level=error logger=thatdam_bus" not in log and "level=error logger=handlers" not in log
