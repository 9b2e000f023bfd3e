"""``thatdam up`` as a real process: solo on the embedded broker, or on RabbitMQ; clean shutdown."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import pytest

from tests.conftest import delete_amqp_prefix
from tests.nodes import BIN, NodeProcess, node_env


@pytest.fixture
def solo_node(state_dir: Path) -> Iterator[NodeProcess]:
    node = NodeProcess(state_dir)
    try:
        node.wait_for_log("msg=\"node ")
        yield node
    finally:
        node.kill()


def test_solo_node_heartbeats_visible_to_bus_tail_in_another_process(solo_node: NodeProcess) -> None:
    result = subprocess.run(
        [str(BIN / "bus-tail"), "node.*.heartbeat", "--json", "--count", "2", "--timeout", "15"],
        env=node_env(solo_node.state_dir), capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    node_id = (solo_node.state_dir / "node_id").read_text().strip()
    assert len(lines) == 2
    for record in lines:
        assert record["routing_key"] == f"node.{node_id}.heartbeat"
        assert record["event"]["type"] == "thatdam.node.heartbeat.v1"
        assert record["event"]["source"].endswith(f"/{node_id}/node")
        assert record["event"]["data"]["role"] == "solo"
    assert lines[1]["event"]["seq"] > lines[0]["event"]["seq"]


def test_node_id_is_stable_across_restarts(state_dir: Path) -> None:
    first = NodeProcess(state_dir)
    first.wait_for_log("msg=\"node ")
    node_id = (state_dir / "node_id").read_text().strip()
    assert first.stop() == 0
    second = NodeProcess(state_dir)
    try:
        second.wait_for_log(f"node {node_id} up")
    finally:
        second.kill()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_the_node_cleanly(solo_node: NodeProcess, sig: int) -> None:
    assert solo_node.stop(sig) == 0
    log = solo_node.log()
    assert "Traceback" not in log
    assert "stopped" in log
    assert not (solo_node.state_dir / "bus.sock").exists(), "the local socket must be removed on shutdown"


async def test_heartbeats_reach_a_plain_aio_pika_consumer(rabbitmq: str, prefix: str, state_dir: Path) -> None:
    connection = await aio_pika.connect(rabbitmq)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(prefix, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, "node.*.heartbeat")
        node = NodeProcess(state_dir, THATDAM_AMQP_URL=rabbitmq, THATDAM_PREFIX=prefix)
        try:
            message = await _next(queue)
            body = json.loads(message.body)
            assert body["type"] == "thatdam.node.heartbeat.v1"
            assert message.routing_key == f"node.{body['data']['node_id']}.heartbeat"
            assert node.stop() == 0
        finally:
            node.kill()
            await channel.exchange_delete(f"{prefix}.dlx")
            await channel.queue_delete(f"{prefix}.dead-letters")
            await exchange.delete()


async def _next(queue: aio_pika.abc.AbstractQueue) -> aio_pika.abc.AbstractIncomingMessage:
    async with asyncio.timeout(15), queue.iterator() as messages:
        async for message in messages:
            return message
    raise AssertionError("no heartbeat within 15 s")


def test_status_reports_the_solo_node(solo_node: NodeProcess) -> None:
    result = subprocess.run(
        [str(BIN / "thatdam"), "status", "--json"],
        env=node_env(solo_node.state_dir), capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    node_id = (solo_node.state_dir / "node_id").read_text().strip()
    assert document["leader"] == node_id
    assert [m["node_id"] for m in document["members"]] == [node_id]
    assert document["members"][0]["role"] == "solo"
    assert document["members"][0]["last_heartbeat_s"] < 2.0


def test_bus_tail_on_rabbitmq_sees_a_cluster_node(rabbitmq: str, prefix: str, state_dir: Path) -> None:
    node = NodeProcess(state_dir, THATDAM_AMQP_URL=rabbitmq, THATDAM_PREFIX=prefix)
    try:
        node.wait_for_log("msg=\"node ")
        result = subprocess.run(
            [str(BIN / "bus-tail"), "node.*.heartbeat", "--json", "--count", "2", "--timeout", "15"],
            env=node_env(state_dir.parent / "tool", THATDAM_AMQP_URL=rabbitmq, THATDAM_PREFIX=prefix),
            capture_output=True, text=True, timeout=30,
        )
        assert result.returncode == 0, result.stderr
        records = [json.loads(line) for line in result.stdout.splitlines()]
        assert [r["event"]["type"] for r in records] == ["thatdam.node.heartbeat.v1"] * 2
        assert node.stop() == 0
    finally:
        node.kill()
        asyncio.run(delete_amqp_prefix(rabbitmq, prefix, []))
