"""bus-tail as a user runs it: a real process against a solo node and against RabbitMQ.

It must survive anything on the bus (binary, invalid JSON, a 5 MB body) and print the next good event; it must
leave no queue behind on the broker; colour only on a terminal, and never with NO_COLOR.
"""

from __future__ import annotations

import asyncio
import os
import pty
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ON_CI, delete_amqp_prefix
from tests.nodes import BIN, NodeProcess, node_env
from tests.tools.tail_process import Publish, TailProcess, event_body
from thatdam_bus.errors import PublishRefused
from thatdam_bus.transports.amqp import AmqpTransport
from thatdam_bus.transports.socket_client import SocketTransport

FIVE_MB = b"\xfe" + b"x" * (5 * 1024 * 1024)


@dataclass
class Bus:
    """Where bus-tail runs (its environment) and how the test publishes there."""

    name: str
    env: dict[str, str]
    publish: Publish
    largest_body: bytes
    """The biggest garbage this bus carries: 5 MB on RabbitMQ; the socket refuses that, so just under 4 MB."""


@pytest.fixture
def solo_node(state_dir: Path) -> Iterator[NodeProcess]:
    node = NodeProcess(state_dir)
    try:
        node.wait_for_log('msg="node ')
        yield node
    finally:
        node.kill()


@pytest.fixture
async def solo_bus(solo_node: NodeProcess) -> AsyncIterator[Bus]:
    transport = SocketTransport(solo_node.state_dir / "bus.sock", prefix="thatdam")
    async with transport:
        with pytest.raises(PublishRefused, match="exceeds the socket"):
            await transport.publish("tools.huge", FIVE_MB)  # a 5 MB body cannot even reach a solo node

        async def publish(key: str, body: bytes) -> None:
            await transport.publish(key, body, headers={"x-test": "tools"})

        yield Bus("solo", node_env(solo_node.state_dir), publish, FIVE_MB[: 3 * 1024 * 1024 + 512 * 1024])


@pytest.fixture
async def rabbitmq_bus(rabbitmq: str, prefix: str, state_dir: Path) -> AsyncIterator[Bus]:
    transport = AmqpTransport(rabbitmq, prefix=prefix)
    await transport.start()
    try:
        async def publish(key: str, body: bytes) -> None:
            await transport.publish(key, body, headers={"x-test": "tools"})

        yield Bus("rabbitmq", node_env(state_dir, THATDAM_AMQP_URL=rabbitmq, THATDAM_PREFIX=prefix), publish, FIVE_MB)
    finally:
        await transport.aclose()
        await delete_amqp_prefix(rabbitmq, prefix, [])


@pytest.fixture(params=["solo", "rabbitmq"])
def bus(request: pytest.FixtureRequest) -> Bus:
    return request.getfixturevalue(f"{request.param}_bus")  # type: ignore[no-any-return]


async def test_garbage_on_the_bus_never_stops_bus_tail(bus: Bus) -> None:
    tail = await TailProcess.start(bus.env, "tools.#", "--raw", "--headers")
    try:
        await tail.wait_bound(bus.publish, "tools.probe")
        await bus.publish("tools.binary", bytes(range(256)))
        await bus.publish("tools.json", b'{"type": "thatdam.node.joined.v1", ')
        await bus.publish("tools.huge", bus.largest_body)
        await bus.publish("tools.after", event_body("tools.after", n=1))
        after = await tail.until("tools.after")
        seen = {r["routing_key"]: r for r in tail.records}
        assert seen["tools.binary"]["error"] == "binary body (not UTF-8 text)"
        assert seen["tools.json"]["error"].startswith("body is not JSON")
        assert seen["tools.huge"]["error"].startswith("body too large")
        assert seen["tools.huge"]["size"] == len(bus.largest_body) and seen["tools.huge"]["truncated"]
        assert after["event"]["data"] == {"n": 1} and after["headers"]["x-test"] == "tools"
        assert tail.proc.returncode is None, "bus-tail must still be running"
        assert await tail.stop() == 130
        assert "Traceback" not in await tail.stderr()
    finally:
        await tail.kill()


def _rabbitmqctl_queues(prefix: str) -> set[str]:
    result = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name"], capture_output=True, text=True,
                            timeout=60, check=True)
    return {line.strip() for line in result.stdout.splitlines() if line.strip().startswith(f"{prefix}.")}


async def test_bus_tail_leaves_no_queue_behind_on_rabbitmq(rabbitmq_bus: Bus, prefix: str) -> None:
    if shutil.which("rabbitmqctl") is None:
        if ON_CI:
            pytest.fail("rabbitmqctl not found (CI=true): cannot list the broker's queues")
        pytest.skip("rabbitmqctl not found: cannot list the broker's queues")
    before = await asyncio.to_thread(_rabbitmqctl_queues, prefix)  # the cluster's own (dead-letters)
    tail = await TailProcess.start(rabbitmq_bus.env, "tools.#")
    try:
        await tail.wait_bound(rabbitmq_bus.publish, "tools.probe")
        during = await asyncio.to_thread(_rabbitmqctl_queues, prefix)
        taps = during - before
        assert len(taps) == 1 and next(iter(taps)).startswith(f"{prefix}.tap."), during
        assert await tail.stop() == 130
    finally:
        await tail.kill()
    async with asyncio.timeout(20):  # the broker deletes an exclusive queue once the connection is gone
        while (left := await asyncio.to_thread(_rabbitmqctl_queues, prefix)) != before:
            await asyncio.sleep(0.2)
    assert left == before == {f"{prefix}.dead-letters"}


def _tail_in_pty(env: dict[str, str], *args: str) -> str:
    """bus-tail with a terminal as stdout (as a user runs it), returning what it wrote to the terminal."""
    controller, terminal = pty.openpty()
    try:
        with subprocess.Popen([str(BIN / "bus-tail"), *args], env=env, stdout=terminal,
                              stderr=subprocess.PIPE) as proc:
            os.close(terminal)
            chunks = []
            while True:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
        return b"".join(chunks).decode(errors="replace")
    finally:
        os.close(controller)


def test_human_output_is_coloured_on_a_terminal_only(solo_node: NodeProcess) -> None:
    env = node_env(solo_node.state_dir)
    args = ("node.*.heartbeat", "--count", "1", "--timeout", "15")
    coloured = _tail_in_pty(env, *args)
    assert "\x1b[36mnode." in coloured and ".heartbeat" in coloured
    assert "\x1b[" not in _tail_in_pty({**env, "NO_COLOR": "1"}, *args)
    piped = subprocess.run([str(BIN / "bus-tail"), *args], env=env, capture_output=True, text=True, timeout=30)
    assert piped.returncode == 0 and "\x1b" not in piped.stdout
    assert "thatdam.node.heartbeat.v1" in piped.stdout and "/node" in piped.stdout


def test_type_and_node_filters(solo_node: NodeProcess) -> None:
    env = node_env(solo_node.state_dir)
    node_id = (solo_node.state_dir / "node_id").read_text().strip()
    run = subprocess.run([str(BIN / "bus-tail"), "--type", "*.heartbeat.*", "--node", node_id, "--json",
                          "--count", "2", "--timeout", "15"], env=env, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.splitlines()) == 2 and '"thatdam.node.heartbeat.v1"' in run.stdout
    nobody = subprocess.run([str(BIN / "bus-tail"), "--node", "someone-else", "--count", "1", "--timeout", "2.5"],
                            env=env, capture_output=True, text=True, timeout=30)
    assert (nobody.returncode, nobody.stdout) == (3, "")


def test_a_closed_pipe_ends_bus_tail_quietly(solo_node: NodeProcess) -> None:
    """``bus-tail | head -1``: the reader leaving is a normal way to stop, not an error."""
    run = subprocess.run(f"'{BIN / 'bus-tail'}' --timeout 20 | head -1", shell=True, env=node_env(solo_node.state_dir),
                         capture_output=True, text=True, timeout=40)
    assert run.returncode == 0 and len(run.stdout.splitlines()) == 1
    assert run.stderr == ""
