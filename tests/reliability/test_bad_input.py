"""Bad input on every durable handler of every service (core and ``handlers/``), through the real dispatch path:
each kind is dead-lettered with a readable reason and a log line, refused intents are answered, and none of it
reaches the handler function or raises out of the callback (so the consumer keeps going).

The transport-level versions (a real broker, the next good message still handled) live in
``transports/test_handlers.py`` and ``security/test_intents_on_the_bus.py``; this one makes sure no durable
handler, present or future, is left out. A new signed payload must be added to ``GOOD_INTENTS``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import pytest

from thatdam_bus.context import HandlerContext
from thatdam_bus.dispatch import make_callback
from thatdam_bus.envelope import Envelope, Payload, encode
from thatdam_bus.events.intent import CaptureStartIntent, CaptureStopIntent
from thatdam_bus.node.services import discover_services
from thatdam_bus.publisher import Bus
from thatdam_bus.security import ClusterKey, IntentVerifier, Keyring, sign_envelope
from thatdam_bus.security.ratelimit import RateLimiter
from thatdam_bus.service import HandlerSpec
from thatdam_bus.transports.base import Delivery, Fate, QueueKind

KEY = ClusterKey.from_text("bad input key")
NODE = "n1"
MAX_BYTES = 4096
DURABLE = [spec for service in discover_services() for spec in service.handlers
           if spec.queue.kind is QueueKind.DURABLE]
SIGNED = [spec for spec in DURABLE if spec.payload.signed]
GOOD_INTENTS: dict[type[Payload], Callable[[], Payload]] = {
    CaptureStartIntent: lambda: CaptureStartIntent(node_id=NODE, device="cam0"),
    CaptureStopIntent: lambda: CaptureStopIntent(node_id=NODE, device="cam0"),
}


class Results:
    """A publish-only stand-in for the transport the intent results go out on."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def publish(self, routing_key: str, body: bytes, *, headers: Mapping[str, Any] | None = None,
                      durable: bool = False, mandatory: bool = False) -> None:
        self.sent.append((routing_key, orjson.loads(body)["data"]))


def callback_for(spec: HandlerSpec, verifier: IntentVerifier, results: Results) -> Any:
    bus = Bus(results, cluster="test", node_id=NODE)  # type: ignore[arg-type]
    called: list[Envelope[Any]] = []

    async def must_not_run(event: Envelope[Any], ctx: HandlerContext) -> None:
        called.append(event)

    guarded = HandlerSpec(spec.service, spec.name, must_not_run, spec.payload, spec.queue, spec.roles,
                          spec.description, spec.per_node)
    context = lambda d: HandlerContext(bus, NODE, d.routing_key, d.attempt, logging.getLogger("test"))  # noqa: E731
    return make_callback(guarded, context, max_bytes=MAX_BYTES, verifier=verifier), called


def routing_key(spec: HandlerSpec) -> str:
    return spec.queue.patterns[0].replace("*", NODE)


def body_of_type(spec: HandlerSpec, data: object) -> bytes:
    return orjson.dumps({"specversion": "1.0", "id": "x1", "type": spec.payload.event_type,
                         "source": "thatdam://test/n9/node", "data": data})


BAD_BODIES: list[tuple[str, Callable[[HandlerSpec], bytes], str]] = [
    ("binary", lambda spec: b"\x00\xff not json", "body is not JSON"),
    ("not-an-object", lambda spec: b"[1, 2]", "not an object"),
    ("not-an-envelope", lambda spec: b'{"specversion": "1.0"}', "invalid envelope"),
    ("wrong-type", lambda spec: orjson.dumps({"type": "thatdam.node.left.v1", "source": "x", "data": {}}), "is not"),
    ("schema-invalid", lambda spec: body_of_type(spec, {"node_id": "bad id!"}), "invalid"),
    ("over-long-field", lambda spec: body_of_type(spec, {"node_id": NODE, "device": "d" * 65}), "data.device"),
    ("oversized", lambda spec: b"{" + b" " * MAX_BYTES + b"}", f"exceeds the limit of {MAX_BYTES}"),
]


@pytest.mark.parametrize("spec", DURABLE, ids=lambda spec: spec.qualified_name)
@pytest.mark.parametrize(("make", "reason"), [(m, r) for _, m, r in BAD_BODIES], ids=[i for i, _, _ in BAD_BODIES])
async def test_malformed_input_is_dead_lettered_on_every_durable_handler(
    spec: HandlerSpec, make: Callable[[HandlerSpec], bytes], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    callback, called = callback_for(spec, IntentVerifier(Keyring(KEY)), Results())
    with caplog.at_level(logging.WARNING, logger="thatdam_bus.dispatch"):
        outcome = await callback(Delivery(routing_key(spec), make(spec), {}, 1, "q"))
    assert outcome.fate is Fate.DEAD_LETTER and reason in (outcome.reason or ""), outcome
    assert any(f"for {spec.qualified_name}: " in r.getMessage() and reason in r.getMessage() for r in caplog.records)
    assert called == []


def _refusals() -> list[tuple[str, str]]:
    return [("unsigned", "unsigned"), ("expired", "expired"), ("replayed", "replayed nonce"),
            ("rate-limited", "rate limited")]


@pytest.mark.parametrize("spec", SIGNED, ids=lambda spec: spec.qualified_name)
@pytest.mark.parametrize(("kind", "reason"), _refusals(), ids=[k for k, _ in _refusals()])
async def test_refused_intents_are_dead_lettered_and_answered_on_every_intent_handler(
    spec: HandlerSpec, kind: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert spec.payload in GOOD_INTENTS, f"add a valid {spec.payload.__name__} to GOOD_INTENTS"
    limiter = RateLimiter(rate=0.001, burst=1)
    verifier = IntentVerifier(Keyring(KEY), limiter=limiter)
    results = Results()
    callback, called = callback_for(spec, verifier, results)
    sender = Bus(results, cluster="test", node_id="script")  # type: ignore[arg-type]
    envelope = sender.envelope(GOOD_INTENTS[spec.payload]())
    if kind != "unsigned":
        clock = (lambda: time.time() - 600) if kind == "expired" else time.time
        envelope = sign_envelope(envelope, routing_key(spec), KEY, clock=clock)
    if kind == "replayed":
        verifier.nonces.claim(f"{spec.qualified_name}\0{envelope.nonce}")  # as if this copy had been handled
    if kind == "rate-limited":
        limiter.allow(envelope.source)  # the source spent its burst just before
    with caplog.at_level(logging.WARNING, logger="thatdam_bus.dispatch"):
        outcome = await callback(Delivery(routing_key(spec), encode(envelope), {}, 1, "q"))
    assert outcome.fate is Fate.DEAD_LETTER and (outcome.reason or "").startswith(reason), outcome
    assert any(f"for {spec.qualified_name}: {reason}" in r.getMessage() for r in caplog.records)
    assert results.sent == [(f"intent.result.{envelope.id}", {"intent_id": envelope.id, "status": "rejected",
                                                               "node_id": NODE, "reason": reason})]
    assert called == []
