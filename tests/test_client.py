"""The Python API for scripts, and the documented AMQP recipe for everything else, against RabbitMQ."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest

from tests.intent_host import KEY, ROUTE, IntentNode, intent_node, silent_queue
from tests.support import Collector, wait_until
from thatdam_bus import (
    CaptureStartIntent,
    Client,
    IntentRejected,
    IntentResult,
    IntentTimeout,
    Settings,
    load_settings,
    publish_intent,
    topics,
)
from thatdam_bus.envelope import decode_raw
from thatdam_bus.security import ClusterKey
from thatdam_bus.transports.base import QueueSpec

README = Path(__file__).resolve().parent.parent / "README.md"
INTENT = CaptureStartIntent(node_id="n1", device="video0")


@pytest.fixture
def settings(rabbitmq: str, prefix: str, state_dir: Path) -> Settings:
    return load_settings(amqp_url=rabbitmq, THATDAM_PREFIX=prefix, state_dir=state_dir, cluster_key=KEY)


@pytest.fixture
async def node(rabbitmq: str, prefix: str, amqp_cleanup: Callable[[str], None]) -> AsyncIterator[IntentNode]:
    async with intent_node(rabbitmq, prefix, amqp_cleanup) as node:
        yield node


async def test_request_returns_the_done_result(settings: Settings, node: IntentNode) -> None:
    async with Client.connect(settings) as client:
        result = await client.request(INTENT, timeout=10)
        assert isinstance(result, IntentResult)
        assert (result.status, result.node_id) == ("done", "n1")
        intent_id = await client.request(CaptureStartIntent(node_id="n1", device="video1"), wait=False)
    assert node.handled[0].id == result.intent_id
    await wait_until(lambda: [e.id for e in node.handled][1:] == [intent_id], what="the unwaited intent")


async def test_a_rejection_is_an_error_with_the_reason(settings: Settings, node: IntentNode) -> None:
    async with Client.connect(settings) as client:
        with pytest.raises(IntentRejected) as policy:
            await client.request(CaptureStartIntent(node_id="n1", device="forbidden"), timeout=10)
        assert policy.value.reason == "device forbidden by policy"
        wrong_key = Client(client.bus.transport, settings=settings, key=ClusterKey.from_text("wrong"))
        with pytest.raises(IntentRejected) as rejected:
            await wrong_key.request(INTENT, timeout=10)
        assert (rejected.value.reason, rejected.value.node_id) == ("bad signature", "n1")
    assert not node.handled


async def test_no_answer_is_a_timeout(settings: Settings, amqp_cleanup: Callable[[str], None]) -> None:
    async with Client.connect(settings) as client:
        silent = await silent_queue(client.bus.transport, settings.prefix, amqp_cleanup)
        with pytest.raises(IntentTimeout) as caught:
            await client.request(INTENT, timeout=0.3)
        assert isinstance(caught.value, TimeoutError)
        await silent.wait_count(1)


async def test_publish_intent_is_one_blocking_call(settings: Settings, node: IntentNode) -> None:
    result = await asyncio.to_thread(publish_intent, INTENT, settings=settings, timeout=10)
    assert isinstance(result, IntentResult) and result.status == "done"
    with pytest.raises(TypeError, match="async"):
        publish_intent(INTENT, settings=settings)


async def publish_raw(node: IntentNode, rabbitmq: str, prefix: str, body: bytes) -> IntentResult:
    """Send ``body`` exactly as the README says a non-Python script must, and return the node's answer."""
    document = orjson.loads(body)
    results = Collector()
    await node.bus.transport.subscribe(QueueSpec((topics.intent_result(document["id"]),)), results)
    connection = await aio_pika.connect(rabbitmq)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(prefix, ensure=False)
        message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                   content_type="application/json",
                                   headers={"ce-type": document["type"], "ce-id": document["id"]})
        await exchange.publish(message, ROUTE, mandatory=True)
    await results.wait_count(1)
    return IntentResult.model_validate(decode_raw(results.got[0].body).data)


async def test_the_documented_recipe_in_python_is_accepted(node: IntentNode, rabbitmq: str,
                                                            prefix: str) -> None:
    now = datetime.now(UTC)
    envelope: dict[str, Any] = {
        "specversion": "1.0", "id": secrets.token_hex(16), "type": "thatdam.intent.capture.start.v1",
        "source": "thatdam://default/my-host/script", "time": now.isoformat(),
        "exp": (now + timedelta(seconds=60)).isoformat(), "nonce": secrets.token_hex(16),
        "data": {"node_id": "n1", "device": "video0"},
    }
    canonical = json.dumps(envelope, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    digest = hmac.new(KEY.encode(), canonical + b"\n" + ROUTE.encode(), hashlib.sha256).hexdigest()
    envelope["sig"] = f"v1:{hashlib.sha256(KEY.encode()).hexdigest()[:8]}:{digest}"
    result = await publish_raw(node, rabbitmq, prefix, json.dumps(envelope).encode())
    assert (result.status, result.intent_id) == ("done", envelope["id"])
    assert [e.id for e in node.handled] == [envelope["id"]]


def readme_shell_recipe() -> str:
    text = README.read_text()
    match = re.search(r"<!-- sign-intent[^>]*-->\n```sh\n(.*?)```", text, re.S)
    assert match, "README lost its sign-intent block"
    return match.group(1)


@pytest.mark.skipif(not all(shutil.which(t) for t in ("jq", "openssl", "sha256sum")),
                    reason="the shell recipe needs jq, openssl and sha256sum")
async def test_the_documented_shell_recipe_is_accepted(node: IntentNode, rabbitmq: str, prefix: str) -> None:
    script = readme_shell_recipe() + 'printf "%s" "$BODY"\n'
    proc = await asyncio.create_subprocess_exec(
        "bash", "-euo", "pipefail", "-c", script, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "THATDAM_CLUSTER_KEY": KEY},
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    result = await publish_raw(node, rabbitmq, prefix, out)
    assert result.status == "done", result.reason
