"""A hypothesis-driven barrage of bad input on every channel one real ``thatdam up`` node consumes.

One node (RabbitMQ, a cluster key, Redis for the lease so it leads and therefore consumes heartbeats and leader
events too, services ``capture`` and ``indexer``, a 4 KiB message limit) takes random bytes, truncated JSON,
wrong-typed data, unknown event types and versions, oversized bodies, intents signed with the wrong key or not
at all, expired intents and replayed copies of them, all published with plain aio-pika to routing keys its
bindings match. Afterwards: the process is alive, a fresh heartbeat arrives, no intent was answered with
anything but ``rejected``, no capture started, every message sent to a durable queue is in
``<prefix>.dead-letters`` and the log says "dead-lettered" for each message.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import AMQP_URL, REDIS_URL, delete_amqp_prefix, require_service
from tests.nodes import NodeProcess
from tests.support import queue_until
from thatdam_bus.envelope import encode
from thatdam_bus.events.intent import CaptureStartIntent, CaptureStopIntent
from thatdam_bus.publisher import Bus
from thatdam_bus.security import ClusterKey, sign_envelope

pytestmark = [pytest.mark.broker, pytest.mark.timeout(240)]

KEY_TEXT = f"barrage key {uuid.uuid4().hex}"
KEY = ClusterKey.from_text(KEY_TEXT)
WRONG_KEY = ClusterKey.from_text("not the cluster key")
MAX_BYTES = 4096
EXAMPLES = 150

DURABLE_KEYS = ["intent.capture.start", "intent.capture.stop", "frame.{other}.cam.ready", "frame.{node}.cam0.ready"]
EPHEMERAL_KEYS = ["node.{other}.heartbeat", "node.{other}.left", "cluster.leader.elected",
                  "cluster.leader.resigned", "cluster.leader.lost"]
TYPES = {"intent.capture.start": CaptureStartIntent.event_type, "intent.capture.stop": CaptureStopIntent.event_type,
         "frame": "thatdam.frame.ready.v1", "node": "thatdam.node.heartbeat.v1", "cluster": "thatdam.leader.elected.v1"}
INTENT_KEYS = {"intent.capture.start": CaptureStartIntent, "intent.capture.stop": CaptureStopIntent}


@dataclass
class Rig:
    loop: asyncio.AbstractEventLoop
    channel: aio_pika.abc.AbstractChannel
    exchange: aio_pika.abc.AbstractExchange
    observer: aio_pika.abc.AbstractQueue
    node: NodeProcess
    node_id: str
    prefix: str
    sent: dict[str, int] = field(default_factory=dict)  # kind -> messages
    durable_sent: int = 0
    total_sent: int = 0


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    require_service("RabbitMQ", "127.0.0.1", 5672)
    require_service("Redis", "127.0.0.1", 6379)
    prefix = f"tbar{uuid.uuid4().hex[:8]}"
    node_id = f"bar-{uuid.uuid4().hex[:6]}"
    state_dir = tmp_path_factory.mktemp("barrage") / "state"
    state_dir.mkdir(mode=0o700)
    (state_dir / "node_id").write_text(node_id + "\n")
    node = NodeProcess(state_dir, THATDAM_AMQP_URL=AMQP_URL, THATDAM_REDIS_URL=REDIS_URL, THATDAM_PREFIX=prefix,
                       THATDAM_CLUSTER_KEY=KEY_TEXT, THATDAM_SERVICES="capture,indexer",
                       THATDAM_MAX_MESSAGE_BYTES=str(MAX_BYTES), THATDAM_LEASE_TTL="10",
                       THATDAM_CONNECT_TIMEOUT="5")
    loop = asyncio.new_event_loop()
    connection: aio_pika.abc.AbstractConnection | None = None
    try:
        node.wait_for_log("-> leader (epoch", timeout=30)

        async def connect() -> Rig:
            nonlocal connection
            connection = await aio_pika.connect(AMQP_URL)
            channel = await connection.channel()
            exchange = await channel.get_exchange(prefix)  # passive: the node declared it
            durable = [f"{prefix}.capture.start.{node_id}", f"{prefix}.capture.stop.{node_id}",
                       f"{prefix}.indexer.index"]
            for name in durable:  # the leader's durable consumers are up before anything is sent
                await queue_until(AMQP_URL, name, lambda _messages, consumers: consumers >= 1, timeout=20)
            await asyncio.sleep(1.0)  # the ephemeral (heartbeat, leader) queues are bound by now too
            observer = await channel.declare_queue(exclusive=True, auto_delete=True)
            for key in (f"node.{node_id}.heartbeat", "intent.result.#", "capture.#"):
                await observer.bind(exchange, key)
            return Rig(loop, channel, exchange, observer, node, node_id, prefix)

        yield loop.run_until_complete(connect())
    finally:
        node.kill()
        queues = [f"{prefix}.capture.start.{node_id}", f"{prefix}.capture.stop.{node_id}", f"{prefix}.indexer.index",
                  f"{prefix}.recorder"]  # the leader's flight-recorder stream
        loop.run_until_complete(delete_amqp_prefix(AMQP_URL, prefix, queues))
        if connection is not None:
            loop.run_until_complete(connection.close())
        loop.close()
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"*{prefix}*"):
            client.delete(key)
        client.close()


# --- bad inputs ------------------------------------------------------------------------------------------------

def _type_of(key: str) -> str:
    return TYPES.get(key) or TYPES[key.split(".")[0]]


def _envelope(event_type: str, data: Any) -> dict[str, Any]:
    return {"specversion": "1.0", "id": uuid.uuid4().hex, "type": event_type,
            "source": "thatdam://barrage/attacker/script", "time": "2026-01-01T00:00:00Z", "data": data}


def _intent(key: str, node_id: str, draw: Any) -> Any:
    sender = Bus(None, cluster="barrage", node_id="attacker")  # type: ignore[arg-type]
    device = draw(st.text("abcdefgh0123456789", min_size=1, max_size=12))
    return sender.envelope(INTENT_KEYS[key](node_id=node_id, device=device))


@st.composite
def bad_inputs(draw: Any, node_id: str) -> tuple[str, str, list[bytes]]:
    """(kind, routing key, bodies to publish on it in order)."""
    kind = draw(st.sampled_from(["random-bytes", "truncated-json", "wrong-types", "unknown-type",
                                 "unknown-version", "oversized", "unsigned", "wrong-signature", "expired",
                                 "replayed"]))
    keys = list(INTENT_KEYS) if kind in {"unsigned", "wrong-signature", "expired", "replayed"} else \
        DURABLE_KEYS + EPHEMERAL_KEYS
    key = draw(st.sampled_from(keys)).format(node=node_id, other="intruder")
    event_type = _type_of(key)
    if kind == "random-bytes":
        return kind, key, [draw(st.binary(max_size=300))]
    if kind == "truncated-json":
        whole = orjson.dumps(_envelope(event_type, {"node_id": node_id, "device": "cam0", "seq": 1}))
        return kind, key, [whole[:draw(st.integers(0, len(whole) - 1))]]
    if kind == "wrong-types":
        wrong = st.one_of(st.lists(st.integers(-1000, 1000), max_size=3),
                          st.dictionaries(st.text(max_size=3), st.none(), max_size=2))
        fields = ["node_id", "device", "seq", "epoch", "leader", "captured_at", "width", "sha256", "keyframe"]
        data = {name: draw(wrong) for name in fields}
        whole = draw(st.sampled_from([_envelope(event_type, data), _envelope(event_type, draw(wrong)),
                                      {**_envelope(event_type, {}), "id": draw(wrong), "data": {}}]))
        return kind, key, [orjson.dumps(whole)]
    if kind == "unknown-type":
        name = draw(st.text("abcdefghij", min_size=1, max_size=10))
        return kind, key, [orjson.dumps(_envelope(f"thatdam.{name}.unknown.v1", {"node_id": node_id}))]
    if kind == "unknown-version":
        version = draw(st.integers(2, 10_000))
        base = event_type.rsplit(".v", 1)[0]
        return kind, key, [orjson.dumps(_envelope(f"{base}.v{version}", {"node_id": node_id, "device": "cam0"}))]
    if kind == "oversized":
        size = draw(st.integers(MAX_BYTES + 1, MAX_BYTES * 8))
        body = orjson.dumps(_envelope(event_type, {"node_id": node_id, "device": "cam0", "pad": ""}))
        return kind, key, [body[:-3] + b"x" * (size - len(body)) + b'"}}']
    envelope = _intent(key, node_id, draw)
    if kind == "unsigned":
        return kind, key, [encode(envelope)]
    if kind == "wrong-signature":
        if draw(st.booleans()):  # the right key, but for the other routing key
            other = "intent.capture.stop" if key == "intent.capture.start" else "intent.capture.start"
            signed = sign_envelope(envelope, other, KEY)
        else:
            signed = sign_envelope(envelope, key, WRONG_KEY)
        return kind, key, [encode(signed)]
    age = draw(st.integers(120, 86_400))
    expired = encode(sign_envelope(envelope, key, KEY, clock=lambda: time.time() - age))
    if kind == "expired":
        return kind, key, [expired]
    return kind, key, [expired] * draw(st.integers(2, 4))  # replayed copies: each must be refused again


# --- the barrage -----------------------------------------------------------------------------------------------

async def _drain(queue: aio_pika.abc.AbstractQueue) -> list[aio_pika.abc.AbstractIncomingMessage]:
    got = []
    while (message := await queue.get(fail=False, no_ack=True)) is not None:
        got.append(message)
    return got


async def _aftermath(rig: Rig, barrage_ended: float) -> dict[str, Any]:
    """Wait for the dead letters of every durable message, then gather what the node published."""
    channel = rig.channel
    dead_name = f"{rig.prefix}.dead-letters"
    with contextlib.suppress(TimeoutError):  # short of them, the assertions on what arrived say what is missing
        await queue_until(AMQP_URL, dead_name, lambda messages, _consumers: messages >= rig.durable_sent, timeout=30)
    await asyncio.sleep(1.0)  # any extra dead letter (there must be none) would show up meanwhile
    dead = await _drain(await channel.declare_queue(dead_name, passive=True))
    observed: list[aio_pika.abc.AbstractIncomingMessage] = []
    fresh_heartbeat = False
    deadline = time.monotonic() + 10
    while not fresh_heartbeat and time.monotonic() < deadline:
        batch = await _drain(rig.observer)
        observed += batch
        fresh_heartbeat = time.time() > barrage_ended and any(
            m.routing_key == f"node.{rig.node_id}.heartbeat" for m in batch)
        await asyncio.sleep(0.3)
    observed += await _drain(rig.observer)
    return {"dead": dead, "observed": observed, "fresh_heartbeat": fresh_heartbeat}


def test_a_barrage_of_bad_input_leaves_the_node_up_and_every_rejection_visible(rig: Rig) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(bad=bad_inputs(rig.node_id))
    def publish(bad: tuple[str, str, list[bytes]]) -> None:
        kind, key, bodies = bad

        async def send() -> None:
            for body in bodies:
                await rig.exchange.publish(aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                                           routing_key=key)

        rig.loop.run_until_complete(send())
        rig.sent[kind] = rig.sent.get(kind, 0) + len(bodies)
        rig.total_sent += len(bodies)
        if key.startswith(("intent.", "frame.")):
            rig.durable_sent += len(bodies)

    started = time.monotonic()
    publish()
    barrage_s = time.monotonic() - started
    # the heartbeats already queued on the observer were sent before or during the barrage
    early = rig.loop.run_until_complete(_drain(rig.observer))
    ended = time.time()
    after = rig.loop.run_until_complete(_aftermath(rig, ended))
    after["observed"] = early + after["observed"]

    dead = after["dead"]
    dead_durable = [m for m in dead if (m.routing_key or "").startswith(("intent.", "frame."))]
    results = [orjson.loads(m.body)["data"] for m in after["observed"]
               if (m.routing_key or "").startswith("intent.result.")]
    captures = [m.routing_key for m in after["observed"] if (m.routing_key or "").startswith("capture.")]
    log = rig.node.log()
    logged = log.count("dead-lettered")
    survived = rig.total_sent if rig.node.proc.poll() is None else 0
    print(f"FIGURE barrage kinds = {dict(sorted(rig.sent.items()))}")
    print(f"FIGURE barrage examples = {EXAMPLES} tried = {rig.total_sent} durable = {rig.durable_sent} "
          f"survived = {survived} barrage_s = {barrage_s:.1f}")
    print(f"FIGURE barrage dead_letters = {len(dead)} (durable {len(dead_durable)}) log_dead_lettered = {logged} "
          f"intent_results = {len(results)} statuses = {sorted({r['status'] for r in results})} "
          f"captures = {len(captures)}")

    assert rig.node.proc.poll() is None, f"the node died:\n{log[-5000:]}"
    assert after["fresh_heartbeat"], "no heartbeat after the barrage"
    assert all(r["status"] == "rejected" for r in results), results
    refused = sum(rig.sent.get(kind, 0) for kind in ("unsigned", "wrong-signature", "expired", "replayed"))
    assert len(results) == refused, (len(results), refused)  # every refused intent was answered
    assert not any(key.endswith(".started") for key in captures), captures
    assert len(dead_durable) == rig.durable_sent, (len(dead_durable), rig.durable_sent)
    assert logged >= rig.total_sent, (logged, rig.total_sent)
    assert "Traceback" not in log and "level=error" not in log, log[-5000:]
