"""Limits on bad or excessive input, on top of what tests/security and tests/transports already cover.

Covered elsewhere, not repeated here: malformed, schema-invalid, wrong-type and oversized bodies are dead-lettered
with a reason and a log line while the handler keeps working (``transports/test_handlers.py``, every transport);
unsigned, badly signed, expired, replayed and stale-epoch intents likewise, each answered on
``intent.result.<id>`` (``security/test_intents_on_the_bus.py``); a poison message on a classic queue
(``transports/test_conformance.py::test_poison_message_is_dead_lettered_after_max_attempts``).

Here: every string and list field has a bound; intents beyond a source's rate are refused as ``rate limited``
the same way; ``THATDAM_QUEUE_TYPE=quorum`` reaches RabbitMQ, and bounded retries hold on a quorum queue.
"""

from __future__ import annotations

import logging
from typing import Any

import aio_pika
import pytest
from aiormq.exceptions import ChannelPreconditionFailed

from tests.security.test_intents_on_the_bus import KEY, handled, start_rig
from tests.support import Collector, wait_until
from tests.transports.conftest import TransportKit
from thatdam_bus.config import load_settings
from thatdam_bus.errors import ConfigError
from thatdam_bus.publisher import Bus
from thatdam_bus.schema_export import generate_schemas
from thatdam_bus.security import IntentVerifier, Keyring, intent_verifier, sign_envelope
from thatdam_bus.security.ratelimit import RateLimiter
from thatdam_bus.transports import connect_amqp
from thatdam_bus.transports.base import ATTEMPTS_HEADER, REASON_HEADER, QueueKind, QueueSpec, Source

BOUNDED_STRING = ("maxLength", "pattern", "enum", "const")


def unbounded(schema: Any, defs: dict[str, Any], where: str) -> list[str]:
    """Paths of string fields without a length bound and list fields without ``maxItems``."""
    if isinstance(schema, list):
        return [p for item in schema for p in unbounded(item, defs, where)]
    if not isinstance(schema, dict):
        return []
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return unbounded(defs[name], defs, f"{where}->{name}")
    found = []
    kind = schema.get("type")
    if kind == "string" and not any(k in schema for k in BOUNDED_STRING) and schema.get("format") != "date-time":
        found.append(where)
    if kind == "array" and "maxItems" not in schema:
        found.append(where)
    for key, value in schema.items():
        if key == "properties":
            found += [p for name, sub in value.items() for p in unbounded(sub, defs, f"{where}.{name}")]
        elif key != "$defs":
            found += unbounded(value, defs, where)
    return found


def test_every_string_and_list_field_of_every_event_is_bounded() -> None:
    import orjson

    problems = []
    for name, text in generate_schemas().items():
        schema = orjson.loads(text)
        problems += unbounded(schema, schema.get("$defs", {}), name.removesuffix(".json"))
    assert not problems, f"unbounded fields (add max_length / a pattern / max items): {sorted(set(problems))}"


def test_a_token_bucket_per_source() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0], max_sources=2)
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b")  # another source has its own bucket
    now[0] += 0.5  # one token back at 2 per second
    assert [limiter.allow("a"), limiter.allow("a")] == [True, False]
    now[0] -= 10  # a clock stepping back refills nothing
    assert not limiter.allow("a")
    assert limiter.allow("c") and len(limiter) == 2  # a third source: the least recently used bucket goes
    assert [limiter.allow("b") for _ in range(4)] == [True, True, True, False]  # "b" was forgotten: full again
    assert limiter.refused == 4


def test_rate_and_queue_type_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THATDAM_INTENT_RATE", "5")
    monkeypatch.setenv("THATDAM_INTENT_BURST", "7")
    monkeypatch.setenv("THATDAM_QUEUE_TYPE", "quorum")
    settings = load_settings()
    limiter = intent_verifier(settings).limiter
    assert limiter is not None and (limiter.rate, limiter.burst) == (5.0, 7)
    assert settings.queue_type == "quorum"
    monkeypatch.setenv("THATDAM_QUEUE_TYPE", "stream")
    with pytest.raises(ConfigError, match="invalid THATDAM_QUEUE_TYPE"):
        load_settings()


async def test_a_flood_from_one_source_is_rate_limited_and_others_still_get_through(
    kit: TransportKit, caplog: pytest.LogCaptureFixture
) -> None:
    now = [0.0]
    limiter = RateLimiter(rate=1.0, burst=2, clock=lambda: now[0])
    rig, host = await start_rig(kit, IntentVerifier(Keyring(KEY), limiter=limiter))
    try:
        flood = [rig.envelope(f"video{i}") for i in range(3)]
        with caplog.at_level(logging.WARNING, logger="thatdam_bus.dispatch"):
            for envelope in flood:
                await rig.send(envelope)
            results = [await rig.result_of(envelope.id) for envelope in flood]
            await rig.dead.wait_count(1)
        assert sorted((r.status, r.reason) for r in results) == [("done", None), ("done", None),
                                                                 ("rejected", "rate limited")]
        assert rig.dead.got[0].headers[REASON_HEADER].startswith("rate limited (thatdam://test/n1/node sent over")
        assert any("rate limited" in r.getMessage() and "dead-lettered" in r.getMessage() for r in caplog.records)
        other = Bus(rig.bus.transport, cluster="test", node_id="n2")  # another source: its own budget
        fresh = sign_envelope(other.envelope(flood[0].data.model_copy(update={"device": "other"})),
                              "intent.capture.start", KEY)
        await rig.send(fresh)
        assert (await rig.result_of(fresh.id)).status == "done"
        now[0] += 1.0  # a token back: the refused intent, sent again as it was, is not taken for a replay
        refused = next(e for e, r in zip(flood, results, strict=True) if r.status == "rejected")
        await rig.send(refused)
        await wait_until(lambda: len(rig.results_for(refused.id)) == 2, what="the second result of the resent one")
        assert [r.status for r in rig.results_for(refused.id)] == ["rejected", "done"]
        assert len(handled) == 4 and len(rig.dead.got) == 1
    finally:
        await host.stop_all()


@pytest.mark.broker
async def test_quorum_queues_are_declared_and_a_poison_message_still_gives_up(
    rabbitmq: str, prefix: str, amqp_cleanup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``THATDAM_QUEUE_TYPE=quorum`` reaches the broker; retries stay bounded and the queue keeps flowing."""
    for name, value in {"AMQP_URL": rabbitmq, "PREFIX": prefix, "QUEUE_TYPE": "quorum", "MAX_ATTEMPTS": "3"}.items():
        monkeypatch.setenv(f"THATDAM_{name}", value)
    transport = await connect_amqp(load_settings())
    assert transport is not None and f"prefix={prefix!r}" in repr(transport)
    amqp_cleanup(f"{prefix}.poisoned")
    try:
        dead, poison, good = Collector(), Collector(), Collector()
        await transport.subscribe(QueueSpec(("#",), source=Source.DEAD_LETTERS), dead)

        async def always_fails(delivery):  # type: ignore[no-untyped-def]
            if delivery.body == b"poison":
                await poison(delivery)
                raise ValueError("cannot handle this")
            return await good(delivery)

        spec = QueueSpec(("intent.#",), kind=QueueKind.DURABLE, name="poisoned", prefetch=1)
        await transport.subscribe(spec, always_fails)
        await transport.publish("intent.capture.start", b"poison", durable=True)
        await transport.publish("intent.capture.start", b"after", durable=True)
        await dead.wait_count(1)
        await good.wait_body(b"after")
        assert len(poison.got) == 3 and int(dead.got[0].headers[ATTEMPTS_HEADER]) == 3
        connection = await aio_pika.connect(rabbitmq)
        async with connection:
            channel = await connection.channel()
            with pytest.raises(ChannelPreconditionFailed, match="x-queue-type"):  # it exists, as quorum
                await channel.declare_queue(f"{prefix}.poisoned", durable=True,
                                            arguments={"x-queue-type": "classic",
                                                       "x-dead-letter-exchange": f"{prefix}.dlx"})
    finally:
        await transport.aclose()
