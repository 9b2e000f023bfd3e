"""Signed intents end to end on every transport: only a good one reaches its typed handler, every refusal is
dead-lettered with its reason and answered on ``intent.result.<id>``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support import Collector, wait_until
from tests.transports.conftest import TransportKit
from thatdam_bus import (
    CaptureStartIntent,
    Client,
    Envelope,
    HandlerContext,
    IntentRejected,
    IntentResult,
    QueueKind,
    Reject,
    Role,
    Service,
    load_settings,
    topics,
)
from thatdam_bus.envelope import decode_raw
from thatdam_bus.fencing import EpochFence
from thatdam_bus.node.services import HandlerHost
from thatdam_bus.publisher import Bus
from thatdam_bus.security import ClusterKey, IntentVerifier, Keyring, sign_envelope
from thatdam_bus.transports.base import REASON_HEADER, QueueSpec, Source

KEY = ClusterKey.from_text("the cluster key")
ROUTE = "intent.capture.start"

handled: list[Envelope[CaptureStartIntent]] = []
service = Service("sectest")


@service.on(ROUTE, queue=QueueKind.DURABLE, roles={Role.SOLO})
async def start_capture(event: Envelope[CaptureStartIntent], ctx: HandlerContext) -> None:
    """Refuses device 'forbidden'; fails attempt 1 on 'flaky' (its retry must not look like a replay)."""
    if event.data.device == "forbidden":
        raise Reject("device forbidden by policy")
    if event.data.device == "flaky" and ctx.attempt == 1:
        raise RuntimeError("transient failure")
    handled.append(event)


@dataclass
class Rig:
    bus: Bus
    dead: Collector
    results: Collector

    def envelope(self, device: str = "video0", *, key: ClusterKey = KEY, clock: Any = time.time,
                 signed: bool = True) -> Envelope[Any]:
        envelope = self.bus.envelope(CaptureStartIntent(node_id="n1", device=device))
        return sign_envelope(envelope, ROUTE, key, clock=clock) if signed else envelope

    async def send(self, envelope: Envelope[Any]) -> None:
        await self.bus.send(envelope, ROUTE, durable=True)

    def results_for(self, intent_id: str) -> list[IntentResult]:
        return [IntentResult.model_validate(decode_raw(d.body).data) for d in self.results.got
                if d.routing_key == topics.intent_result(intent_id)]

    async def result_of(self, intent_id: str) -> IntentResult:
        await wait_until(lambda: bool(self.results_for(intent_id)), what=f"the result of {intent_id}")
        return self.results_for(intent_id)[0]


async def start_rig(kit: TransportKit, verifier: IntentVerifier | None,
                    fence: EpochFence | None = None) -> tuple[Rig, HandlerHost]:
    handled.clear()
    transport = await kit.new()
    kit.durable("sectest.start_capture", ROUTE)  # registers the queue for cleanup
    bus = Bus(transport, cluster="test", node_id="n1")
    host = HandlerHost(bus, [service], max_bytes=65536, verifier=verifier, fence=fence)
    rig = Rig(bus, Collector(), Collector())
    await transport.subscribe(QueueSpec(patterns=("#",), source=Source.DEAD_LETTERS), rig.dead)
    await transport.subscribe(QueueSpec(patterns=(topics.Patterns.INTENT_RESULTS,)), rig.results)
    await host.apply_role(Role.SOLO)
    return rig, host


@pytest.fixture
async def rig(kit: TransportKit) -> AsyncIterator[Rig]:
    rig, host = await start_rig(kit, IntentVerifier(Keyring(KEY)))
    yield rig
    await host.stop_all()


def _expired_clock() -> float:
    return time.time() - 120


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda rig: rig.envelope(signed=False), "unsigned"),
        (lambda rig: rig.envelope(key=ClusterKey.from_text("a guess")), "bad signature"),
        (lambda rig: rig.envelope(clock=_expired_clock), "expired"),
    ],
    ids=["unsigned", "bad-signature", "expired"],
)
async def test_a_refused_intent_never_reaches_the_handler(rig: Rig, make: Any, reason: str) -> None:
    bad = make(rig)
    await rig.send(bad)
    await rig.dead.wait_count(1)
    assert rig.dead.got[0].headers[REASON_HEADER].startswith(reason)
    result = await rig.result_of(bad.id)
    assert (result.status, result.reason, result.node_id) == ("rejected", reason, "n1")
    good = rig.envelope("after")
    await rig.send(good)
    assert (await rig.result_of(good.id)).status == "done"
    assert [e.id for e in handled] == [good.id]


async def test_a_good_intent_is_done_once_and_its_replay_is_refused(rig: Rig) -> None:
    good = rig.envelope()
    await rig.send(good)
    assert (await rig.result_of(good.id)).status == "done"
    await rig.send(good)  # the very same bytes again
    await rig.dead.wait_count(1)
    assert rig.dead.got[0].headers[REASON_HEADER].startswith("replayed nonce")
    await wait_until(lambda: len(rig.results_for(good.id)) == 2, what="the replay's result")
    assert [(r.status, r.reason) for r in rig.results_for(good.id)] == [("done", None),
                                                                        ("rejected", "replayed nonce")]
    assert [e.id for e in handled] == [good.id]


async def test_handler_reject_and_retry_are_reported(rig: Rig) -> None:
    forbidden, flaky = rig.envelope("forbidden"), rig.envelope("flaky")
    await rig.send(forbidden)
    await rig.send(flaky)
    refused = await rig.result_of(forbidden.id)
    assert (refused.status, refused.reason) == ("rejected", "device forbidden by policy")
    assert (await rig.result_of(flaky.id)).status == "done"  # the retry got through: not a replay
    assert [e.data.device for e in handled] == ["flaky"]
    assert len(rig.results_for(flaky.id)) == 1


async def test_a_node_without_a_key_refuses_intents(kit: TransportKit) -> None:
    rig, host = await start_rig(kit, None)
    try:
        good = rig.envelope()
        await rig.send(good)
        result = await rig.result_of(good.id)
        assert (result.status, result.reason) == ("rejected", "no cluster key on this node")
        await rig.dead.wait_count(1)
        assert not handled
    finally:
        await host.stop_all()


async def test_the_client_signs_and_waits_on_every_transport(kit: TransportKit, rig: Rig) -> None:
    client = Client(await kit.new(), settings=load_settings(), key=KEY)
    result = await client.request(CaptureStartIntent(node_id="n1", device="video0"), timeout=10)
    assert (result.status, [e.id for e in handled]) == ("done", [result.intent_id])
    with pytest.raises(IntentRejected, match="device forbidden by policy"):
        await client.request(CaptureStartIntent(node_id="n1", device="forbidden"), timeout=10)


async def test_an_intent_from_a_replaced_leader_is_refused(kit: TransportKit) -> None:
    """Fencing: an intent stamped with an epoch older than the newest seen comes from a deposed leader."""
    fence = EpochFence()
    fence.observe(7)
    rig, host = await start_rig(kit, IntentVerifier(Keyring(KEY)), fence)
    try:
        stale = sign_envelope(rig.envelope(signed=False).model_copy(update={"epoch": 6}), ROUTE, KEY)
        current = sign_envelope(rig.envelope("current", signed=False).model_copy(update={"epoch": 7}), ROUTE, KEY)
        unfenced = rig.envelope("script")  # epoch 0: a script makes no leadership claim
        for envelope in (stale, current, unfenced):
            await rig.send(envelope)
        result = await rig.result_of(stale.id)
        assert (result.status, result.reason) == ("rejected", "stale epoch")
        assert (await rig.result_of(current.id)).status == "done"
        assert (await rig.result_of(unfenced.id)).status == "done"
        assert [e.data.device for e in handled] == ["current", "script"]
    finally:
        await host.stop_all()
