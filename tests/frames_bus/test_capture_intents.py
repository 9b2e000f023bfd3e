"""Capture intents: start and stop capture on one named node, and nowhere else.

In process (embedded broker) for the manager's rules, then two real nodes on RabbitMQ with Redis for the
acceptance: ``thatdam publish intent.capture.start --wait`` starts capture on the node it names only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from handlers import capture
from tests.frames_bus.support import Tap, publish_cli, start_node
from tests.nodes import NodeProcess
from tests.support import wait_until
from thatdam_bus import CaptureStartIntent, CaptureStopIntent, Payload, Role, load_settings
from thatdam_bus.node.services import HandlerHost
from thatdam_bus.publisher import Bus
from thatdam_bus.security import ClusterKey, IntentVerifier, Keyring, sign_envelope
from thatdam_bus.transports.amqp import AmqpTransport
from thatdam_bus.transports.embedded import EmbeddedTransport

KEY = ClusterKey.from_text("in-process frames key")
PATTERN = "test://testsrc2?size=320x180&rate=30"


class Host:
    """One node's capture service on an embedded broker, a tap on everything, and signed intents."""

    def __init__(self, bus: Bus, host: HandlerHost, tap: Tap) -> None:
        self.bus, self.host, self.tap = bus, host, tap

    @property
    def manager(self) -> capture.CaptureManager:
        return self.host.state_of("capture")  # type: ignore[no-any-return]

    async def intent(self, payload: Payload, verb: str) -> str:
        routing_key = f"intent.capture.{verb}"
        envelope = sign_envelope(self.bus.envelope(payload), routing_key, KEY)
        await self.bus.send(envelope, routing_key, durable=True)
        return envelope.id

    async def result(self, intent_id: str) -> dict[str, Any]:
        key = f"intent.result.{intent_id}"
        await wait_until(lambda: bool(self.tap.keyed(key)), what=f"the result of {intent_id}")
        return self.tap.keyed(key)[0].data


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Host]:
    settings = load_settings(state_dir=tmp_path, sources=(f"cam0={PATTERN}",), capture_fps=10.0,
                             thumbnail_width=64)
    async with EmbeddedTransport(prefix="t") as transport:
        bus = Bus(transport, cluster="test", node_id="n1")
        tap = await Tap.on(transport, "#")
        host = HandlerHost(bus, [capture.service], max_bytes=65536, settings=settings,
                           verifier=IntentVerifier(Keyring(KEY)))
        await host.apply_role(Role.SOLO)
        try:
            yield Host(bus, host, tap)
        finally:
            await host.stop_all()


async def test_configured_sources_start_with_the_service_and_stop_with_it(node: Host) -> None:
    await node.tap.wait(lambda: len(node.tap.keyed("frame.n1.cam0.ready")) >= 2, "frames of cam0")
    assert node.manager.capturing("cam0")
    await node.host.apply_role(Role.PROXY)  # capture does not run as proxy: the task and its loops end
    assert node.tap.keyed("capture.n1.cam0.stopped")[0].data["reason"] == "requested"
    assert node.manager.loops == {} and not node.manager.capturing("cam0")


async def test_start_is_idempotent_and_stop_of_an_unknown_device_is_rejected(node: Host) -> None:
    first = await node.intent(CaptureStartIntent(node_id="n1", device="cam1", source=PATTERN, fps=5), "start")
    again = await node.intent(CaptureStartIntent(node_id="n1", device="cam1", source=PATTERN), "start")
    assert (await node.result(first))["status"] == "done"
    assert (await node.result(again))["status"] == "done"
    await node.tap.wait(lambda: len(node.tap.keyed("frame.n1.cam1.ready")) >= 2, "frames of cam1")
    assert len(node.tap.keyed("capture.n1.cam1.started")) == 1, "the second start changed nothing"

    stop = await node.intent(CaptureStopIntent(node_id="n1", device="cam1"), "stop")
    assert (await node.result(stop))["status"] == "done"
    await node.tap.wait(lambda: bool(node.tap.keyed("capture.n1.cam1.stopped")), "cam1 stopped")
    assert node.manager.capturing("cam0") and not node.manager.capturing("cam1")

    unknown = await node.intent(CaptureStopIntent(node_id="n1", device="cam1"), "stop")
    result = await node.result(unknown)
    assert (result["status"], result["reason"]) == ("rejected", "no capture running on cam1")


async def test_a_start_without_a_source_or_with_a_bad_one_is_rejected(node: Host) -> None:
    nowhere = await node.intent(CaptureStartIntent(node_id="n1", device="cam9"), "start")
    assert "no source for cam9" in (await node.result(nowhere))["reason"]
    bad = await node.intent(CaptureStartIntent(node_id="n1", device="cam9", source="test://nope"), "start")
    assert "unknown test pattern" in (await node.result(bad))["reason"]


async def test_an_intent_for_another_node_is_left_to_it(node: Host) -> None:
    other = await node.intent(CaptureStartIntent(node_id="n2", device="cam5", source=PATTERN), "start")
    mine = await node.intent(CaptureStartIntent(node_id="n1", device="cam6", source=PATTERN), "start")
    await node.result(mine)
    assert not node.tap.keyed(f"intent.result.{other}"), "only the named node answers"
    assert not node.manager.capturing("cam5")


def test_a_malformed_sources_entry_stops_the_node_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown test pattern"):
        capture.CaptureManager(load_settings(state_dir=tmp_path, sources=("cam0=test://nope",)))
    with pytest.raises(ValueError, match="appears twice"):
        capture.CaptureManager(load_settings(state_dir=tmp_path, sources=("a=/dev/video0", "a=/dev/video1")))
    manager = capture.CaptureManager(load_settings(state_dir=tmp_path, sources=("/dev/video0",)))
    assert manager.configured == {"dev_video0": "/dev/video0"}


# -- two real nodes on RabbitMQ and Redis --------------------------------------------------------------------


@pytest.fixture
async def two_workers(rabbitmq: str, redis_url: str, prefix: str, tmp_path: Path,
                      amqp_cleanup: Callable[[str], None]) -> AsyncIterator[dict[str, NodeProcess]]:
    env = {"THATDAM_AMQP_URL": rabbitmq, "THATDAM_REDIS_URL": redis_url, "THATDAM_PREFIX": prefix,
           "THATDAM_ROLE": "worker", "THATDAM_SERVICES": "capture", "THATDAM_CLUSTER_KEY": "frames test cluster key",
           "THATDAM_HEARTBEAT_INTERVAL": "0.5", "THATDAM_THUMBNAIL_WIDTH": "64"}
    nodes: dict[str, NodeProcess] = {}
    try:
        for name in ("node-a", "node-b"):
            for verb in ("start", "stop"):
                amqp_cleanup(f"{prefix}.capture.{verb}.{name}")
            nodes[name] = start_node(tmp_path / name, name, **env)
        for node in nodes.values():
            node.wait_for_log("up as worker")
        yield nodes
    finally:
        for node in nodes.values():
            node.kill()
        client = aioredis.Redis.from_url(redis_url)
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_an_intent_starts_capture_on_the_named_node_only_and_stop_stops_it(
    two_workers: dict[str, NodeProcess], rabbitmq: str, prefix: str, tmp_path: Path
) -> None:
    cli_env = {"THATDAM_AMQP_URL": rabbitmq, "THATDAM_PREFIX": prefix}
    async with AmqpTransport(rabbitmq, prefix=prefix) as transport:
        tap = await Tap.on(transport, "frame.#", "capture.#", "node.*.heartbeat")
        start = {"node_id": "node-a", "device": "cam", "source": PATTERN, "fps": 10}
        for _ in range(2):  # the second start is idempotent: done, and nothing changes
            result = await publish_cli(tmp_path, "intent.capture.start", start, env=cli_env)
            assert result.code == 0 and "done by node-a" in result.stdout, (result.stdout, result.stderr)
        await tap.wait(lambda: len(tap.keyed("frame.node-a.cam.ready")) >= 3, "frames from node-a")
        assert len(tap.keyed("capture.node-a.cam.started")) == 1
        assert not tap.prefixed("frame.node-b.") and not tap.prefixed("capture.node-b."), "nowhere else"

        result = await publish_cli(tmp_path, "intent.capture.stop", {"node_id": "node-a", "device": "cam"},
                                   env=cli_env)
        assert result.code == 0 and "done by node-a" in result.stdout, (result.stdout, result.stderr)
        await tap.wait(lambda: bool(tap.keyed("capture.node-a.cam.stopped")), "capture stopped on node-a")
        await _frames_have_ceased(tap, "node-a")

        result = await publish_cli(tmp_path, "intent.capture.stop", {"node_id": "node-b", "device": "cam"},
                                   env=cli_env)
        assert result.code == 1 and "no capture running on cam" in result.stdout, (result.stdout, result.stderr)
        assert not tap.prefixed("frame.node-b.")
    for node in two_workers.values():
        assert node.stop() == 0 and "Traceback" not in node.log()


async def _frames_have_ceased(tap: Tap, node_id: str) -> None:
    """No frame of ``node_id`` arrives while it sends two more heartbeats (its own clock, not a sleep)."""
    def beats() -> int:
        return len(tap.keyed(f"node.{node_id}.heartbeat"))

    def frames() -> int:
        return len(tap.prefixed(f"frame.{node_id}."))

    start = beats()
    await tap.wait(lambda: beats() >= start + 1, "a heartbeat after the stop")  # in-flight frames drain
    counted, start = frames(), beats()
    await tap.wait(lambda: beats() >= start + 2, "two more heartbeats")
    assert frames() == counted, "frames kept coming after the capture stopped"
