"""The opt-in Prometheus endpoint serves the named metrics and its counts move; heartbeats carry the health
figures that ``thatdam status`` sums up."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.nodes import BIN, NodeProcess, node_env
from tests.observability.support import free_port
from thatdam_bus.transports.socket_client import SocketTransport

FAMILIES = {  # metric family -> its Prometheus type (counters expose <family>_total samples)
    "thatdam_messages_published": "counter", "thatdam_messages_consumed": "counter",
    "thatdam_messages_dead_lettered": "counter", "thatdam_handler_duration_seconds": "histogram",
    "thatdam_outbox_depth": "gauge", "thatdam_queue_consumers": "gauge", "thatdam_lease_renew_seconds": "histogram",
    "thatdam_leader_epoch": "gauge", "thatdam_node_role": "gauge", "thatdam_frames_captured": "counter",
    "thatdam_frames_dropped": "counter", "thatdam_recorder_events": "counter", "thatdam_recorder_bytes": "gauge",
    "thatdam_solo_journal_events": "gauge",
}


@pytest.fixture
def metrics_node(state_dir: Path) -> Iterator[tuple[NodeProcess, int]]:
    port = free_port()
    node = NodeProcess(state_dir, THATDAM_METRICS_PORT=str(port))
    try:
        node.wait_for_log("metrics on http://127.0.0.1:")
        yield node, port
    finally:
        node.kill()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return str(response.read().decode())


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one series (0 when absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        found = re.fullmatch(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)", line)
        if found and ",".join(sorted((found.group(1) or "").split(","))) == wanted:
            return float(found.group(2))
    return 0.0


async def until(port: int, predicate: Callable[[str], bool], timeout: float = 15.0) -> str:
    """Scrape until ``predicate(text)`` holds; returns that scrape."""
    async with asyncio.timeout(timeout):
        while not predicate(text := await asyncio.to_thread(scrape, port)):
            await asyncio.sleep(0.1)
    return text


async def test_the_endpoint_serves_the_named_metrics_and_counts_move(metrics_node: tuple[NodeProcess, int]) -> None:
    node, port = metrics_node
    first = await asyncio.to_thread(scrape, port)
    for family, kind in FAMILIES.items():
        assert re.search(rf"^# TYPE {family}(_total)? {kind}$", first, re.MULTILINE), f"{family} ({kind}) missing"
    assert sample(first, "thatdam_node_role", role="solo") == 1.0
    beats = sample(first, "thatdam_messages_published_total", channel="node.*.heartbeat")
    await until(port, lambda text: sample(text, "thatdam_messages_published_total",
                                                   channel="node.*.heartbeat") > beats)

    transport = SocketTransport(node.state_dir / "bus.sock", prefix="thatdam")
    async with transport:
        await transport.publish("node.intruder.heartbeat", b"\x00 not json")
    text = await until(port, lambda text: sample(text, "thatdam_messages_dead_lettered_total",
                                                  handler="membership.track_heartbeat", channel="node.*.heartbeat",
                                                  reason="not_json") == 1)
    assert sample(text, "thatdam_handler_duration_seconds_count", handler="membership.track_heartbeat") > 0
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/elsewhere", timeout=5)

    async with asyncio.timeout(30):
        while True:
            run = await asyncio.to_thread(subprocess.run, [str(BIN / "thatdam"), "status", "--json"],
                                          env=node_env(node.state_dir), capture_output=True, text=True, timeout=30)
            health = json.loads(run.stdout)["health"]
            if (health["dead_letters_1m"] or 0) >= 1:  # None: no heartbeat heard in this window yet
                break
    assert health == {"dead_letters_1m": 1, "outbox_depth": 0, "queues_without_consumers": [],
                      "queues_checked_on_broker": False}
