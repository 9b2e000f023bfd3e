"""Handlers written once: the same typed handler module on every transport, and bad input dead-lettered."""

from __future__ import annotations

import logging

import orjson
import pytest

from tests.support import Collector, wait_until
from tests.transports.conftest import TransportKit
from thatdam_bus import CaptureStartIntent, Envelope, HandlerContext, QueueKind, Reject, Role, Service
from thatdam_bus.node.services import HandlerHost
from thatdam_bus.publisher import Bus
from thatdam_bus.security import ClusterKey, IntentVerifier, Keyring, sign_envelope
from thatdam_bus.transports.base import REASON_HEADER, QueueSpec, Source

received: list[Envelope[CaptureStartIntent]] = []
KEY = ClusterKey.from_text("test cluster key")
service = Service("testcapture")


@service.on("intent.capture.start", queue=QueueKind.DURABLE, roles={Role.SOLO})
async def start_capture(event: Envelope[CaptureStartIntent], ctx: HandlerContext) -> None:
    """Records intents; refuses device 'forbidden' explicitly and fails once on device 'flaky'."""
    if event.data.device == "forbidden":
        raise Reject("device forbidden by policy")
    if event.data.device == "flaky" and ctx.attempt == 1:
        raise RuntimeError("transient failure")
    received.append(event)


@pytest.fixture
async def running(kit: TransportKit):  # type: ignore[no-untyped-def]
    received.clear()
    transport = await kit.new()
    kit.durable("testcapture.start_capture", "intent.capture.start")  # registers the queue for cleanup
    bus = Bus(transport, cluster="test", node_id="n1")
    host = HandlerHost(bus, [service], max_bytes=4096, verifier=IntentVerifier(Keyring(KEY)))
    dead = Collector()
    await transport.subscribe(QueueSpec(patterns=("#",), source=Source.DEAD_LETTERS), dead)
    await host.apply_role(Role.SOLO)
    yield bus, dead
    await host.stop_all()


async def publish(bus: Bus, intent: CaptureStartIntent) -> Envelope[CaptureStartIntent]:
    """Intents are signed: built, signed for their routing key, then sent."""
    envelope = sign_envelope(bus.envelope(intent), "intent.capture.start", KEY)
    await bus.send(envelope, "intent.capture.start", durable=True)
    return envelope


async def test_typed_handler_gets_a_validated_model(running) -> None:  # type: ignore[no-untyped-def]
    bus, _ = running
    sent = await publish(bus, CaptureStartIntent(node_id="n1", device="video0", fps=2))
    await wait_until(lambda: len(received) == 1)
    assert received[0].id == sent.id
    assert isinstance(received[0].data, CaptureStartIntent)
    assert received[0].data.fps == 2


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\x00\x01 not json", "body is not JSON"),
        (b'{"specversion": "1.0"}', "invalid envelope"),
        (orjson.dumps({"type": "thatdam.intent.capture.start.v1", "source": "x", "data": {"node_id": "n1"}}),
         "data.device: Field required"),
        (orjson.dumps({"type": "thatdam.node.heartbeat.v1", "source": "x", "data": {}}), "is not"),
        (b"{" + b" " * 5000 + b"}", "exceeds the limit of 4096"),
    ],
    ids=["binary", "not-an-envelope", "schema-invalid", "wrong-type", "oversized"],
)
async def test_bad_input_is_dead_lettered_with_reason_and_the_handler_keeps_running(
    running, body: bytes, reason: str, caplog: pytest.LogCaptureFixture  # type: ignore[no-untyped-def]
) -> None:
    bus, dead = running
    with caplog.at_level(logging.WARNING, logger="thatdam_bus.dispatch"):
        await bus.transport.publish("intent.capture.start", body, durable=True)
        await dead.wait_count(1)
    assert reason in dead.got[0].headers[REASON_HEADER]
    assert dead.got[0].body == body
    assert any("dead-lettered intent.capture.start" in r.getMessage() for r in caplog.records)
    await publish(bus, CaptureStartIntent(node_id="n1", device="video1"))
    await wait_until(lambda: len(received) == 1, what="the next good message is still handled")


async def test_reject_dead_letters_and_a_raising_handler_gets_a_second_attempt(running) -> None:  # type: ignore[no-untyped-def]
    bus, dead = running
    await publish(bus, CaptureStartIntent(node_id="n1", device="forbidden"))
    await publish(bus, CaptureStartIntent(node_id="n1", device="flaky"))
    await dead.wait_count(1)
    assert dead.got[0].headers[REASON_HEADER] == "device forbidden by policy"
    await wait_until(lambda: [e.data.device for e in received] == ["flaky"], what="flaky handled on retry")


async def test_redelivered_duplicate_is_processed_once(running) -> None:  # type: ignore[no-untyped-def]
    bus, _ = running
    envelope = sign_envelope(bus.envelope(CaptureStartIntent(node_id="n1", device="video0")),
                             "intent.capture.start", KEY)
    for _ in range(3):
        await bus.send(envelope, "intent.capture.start", durable=True)
    await publish(bus, CaptureStartIntent(node_id="n1", device="after"))
    await wait_until(lambda: len(received) >= 2)
    assert [e.data.device for e in received] == ["video0", "after"]
