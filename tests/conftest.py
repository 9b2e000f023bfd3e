"""Shared fixtures: real RabbitMQ/Redis reachability (an error on CI, a skip locally), per-test isolation."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest

AMQP_URL = os.environ.get("THATDAM_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
REDIS_URL = os.environ.get("THATDAM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ON_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
os.environ.setdefault("THATDAM_MDNS", "off")
"""In-process nodes stay off the developer's LAN; tests/multihost builds its own network and turns mDNS on."""


REFERENCE_DIRS = [
    Path(os.environ.get("THATDAM_REFERENCE_SCHEMAS", "/nonexistent")),
    Path(__file__).resolve().parents[2] / "shared" / "reference-schemas",
    Path("/work/shared/reference-schemas"),
]


def reference_schema(name: str) -> Path:
    """An offline official schema (AsyncAPI, Compose). CI has them at ../shared/reference-schemas; a user's
    clone may not, which skips the check locally but fails it on CI."""
    for directory in REFERENCE_DIRS:
        if (directory / name).exists():
            return directory / name
    if ON_CI:
        pytest.fail(f"reference schema {name} not found in {[str(d) for d in REFERENCE_DIRS]} (CI=true)")
    pytest.skip(f"reference schema {name} not available (set THATDAM_REFERENCE_SCHEMAS)")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip locally when a service is down; on CI that is a failure, because skipped broker tests prove nothing."""
    if _reachable(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}"
    if ON_CI:
        pytest.fail(f"{message} (CI=true: broker tests must run; .ci/run should have started it)")
    pytest.skip(message)


@pytest.fixture
def rabbitmq() -> str:
    require_service("RabbitMQ", "127.0.0.1", 5672)
    return AMQP_URL


@pytest.fixture
def redis_url() -> str:
    require_service("Redis", "127.0.0.1", 6379)
    return REDIS_URL


@pytest.fixture
def prefix() -> str:
    """A unique exchange / queue / key prefix per test, so tests never see each other's traffic."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return path


async def delete_amqp_prefix(url: str, prefix: str, queues: list[str]) -> None:
    """Remove what a test declared under its prefix: named queues, the dead-letter queue and both exchanges."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for queue in [*queues, f"{prefix}.dead-letters"]:
            await channel.queue_delete(queue)
        for exchange in (prefix, f"{prefix}.dlx"):
            await channel.exchange_delete(exchange)


@pytest.fixture
async def amqp_cleanup(rabbitmq: str, prefix: str) -> AsyncIterator[Callable[[str], None]]:
    """Yields ``register(queue_name)``; at teardown every registered queue and the prefix's exchanges go."""
    queues: list[str] = []
    yield queues.append
    await delete_amqp_prefix(rabbitmq, prefix, queues)


FIGURES_FILE = os.environ.get("THATDAM_FIGURES_FILE")


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Callable[[str, Any], None]:
    """Record a measured figure: printed (``pytest -rP`` shows it) and appended to ``$THATDAM_FIGURES_FILE``."""
    def record(name: str, value: Any) -> None:
        print(f"FIGURE {request.node.name} {name} = {value}")
        if FIGURES_FILE:
            with open(FIGURES_FILE, "ab") as handle:
                handle.write(orjson.dumps({"test": request.node.name, "name": name, "value": value}) + b"\n")
    return record
