"""RabbitMQ recovery is the transport's job: kill our connection server-side, consumption must resume.

Only connections this test can identify as its own are closed (by their client-provided name, which carries
the per-test prefix), because other tests may share the broker. ``THATDAM_TEST_RABBITMQCTL`` overrides the
command, e.g. ``docker exec rabbitmq rabbitmqctl`` when the broker runs in a container.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import shutil
import time
from collections.abc import Callable

import aio_pika
import pytest

from tests.conftest import ON_CI
from tests.support import Collector, queue_until, wait_until
from tests.tcp_proxy import TcpProxy
from thatdam_bus.errors import TransportUnavailable
from thatdam_bus.transports.amqp import AmqpTransport
from thatdam_bus.transports.base import QueueKind, QueueSpec

RABBITMQCTL = shlex.split(os.environ.get("THATDAM_TEST_RABBITMQCTL", "rabbitmqctl"))


async def _rabbitmqctl(*args: str, timeout: float = 30.0) -> str:
    if shutil.which(RABBITMQCTL[0]) is None:
        if ON_CI:
            pytest.fail(f"{RABBITMQCTL[0]} not found on CI: the recovery tests must run")
        pytest.skip(f"{RABBITMQCTL[0]} not found (set THATDAM_TEST_RABBITMQCTL)")
    process = await asyncio.create_subprocess_exec(
        *RABBITMQCTL, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, f"rabbitmqctl {args} failed: {err.decode()}"
    return out.decode()


async def close_connections_named(name: str) -> int:
    """Close, server-side, every connection whose client-provided ``connection_name`` is ``name``."""
    listing = await _rabbitmqctl("-q", "list_connections", "pid", "client_properties", "--no-table-headers")
    marker = f'{{"connection_name","{name}"}}'
    pids = [line.split("\t", 1)[0] for line in listing.splitlines() if marker in line]
    for pid in pids:
        await _rabbitmqctl("close_connection", pid, "thatdam recovery test")
    return len(pids)


async def test_consumption_resumes_after_connection_is_killed(
    rabbitmq: str, amqp_cleanup: Callable[[str], None], prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="thatdam_bus.transports.amqp")
    amqp_cleanup(f"{prefix}.survivor")
    name = f"thatdam-test {prefix}"
    bus = AmqpTransport(rabbitmq, prefix=prefix, reconnect_max_delay=0.5, connection_name=name)
    await bus.start()
    try:
        work, tap = Collector(), Collector()
        await bus.subscribe(QueueSpec(("intent.#",), kind=QueueKind.DURABLE, name="survivor"), work)
        await bus.subscribe(QueueSpec(("intent.#",)), tap)
        await bus.publish("intent.capture.start", b"before", durable=True)
        await work.wait_body(b"before")
        await tap.wait_body(b"before")

        assert await close_connections_named(bus.connection_name) == 1
        await wait_until(lambda: bus.recoveries >= 1, timeout=20.0, what="the transport to reconnect")

        await bus.publish("intent.capture.stop", b"after", durable=True)
        await work.wait_body(b"after")
        await tap.wait_body(b"after")
        assert "connection lost" in caplog.text
        assert "ZERO CONSUMERS" not in caplog.text
    finally:
        await bus.aclose()


async def test_consumption_resumes_after_the_queue_is_deleted_under_it(
    rabbitmq: str, amqp_cleanup: Callable[[str], None], prefix: str
) -> None:
    """The broker cancels the consumer but keeps the connection: only the subscription itself can notice."""
    amqp_cleanup(f"{prefix}.doomed")
    bus = AmqpTransport(rabbitmq, prefix=prefix)
    await bus.start()
    try:
        work = Collector()
        await bus.subscribe(QueueSpec(("intent.#",), kind=QueueKind.DURABLE, name="doomed"), work)
        connection = await aio_pika.connect(rabbitmq)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(f"{prefix}.doomed")

            async def redeclared() -> bool:
                probe = await connection.channel()
                queue = await probe.declare_queue(f"{prefix}.doomed", passive=True)
                await probe.close()
                return bool(queue.declaration_result.consumer_count)

            async with asyncio.timeout(10.0):
                while True:
                    with contextlib.suppress(aio_pika.exceptions.ChannelClosed):
                        if await redeclared():
                            break
                    await asyncio.sleep(0.05)
        await bus.publish("intent.capture.start", b"after-delete", durable=True)
        await work.wait_body(b"after-delete")
    finally:
        await bus.aclose()


async def test_first_connect_fails_fast_when_broker_is_unreachable() -> None:
    bus = AmqpTransport("amqp://guest:guest@127.0.0.1:1/", prefix="unreachable", connect_timeout=2.0)
    started = time.monotonic()
    with pytest.raises(TransportUnavailable):
        await bus.start()
    assert time.monotonic() - started < 3.0
    await bus.aclose()


async def test_an_abandoned_transport_waits_for_nothing_on_a_dead_link(
    rabbitmq: str, amqp_cleanup: Callable[[str], None], prefix: str, figure: Callable[[str, object], None]
) -> None:
    """A partition (the proxy stalls: no byte passes, no connection closes): after ``abandon`` a publish
    waiting for its confirm fails at once, new publishes fail, nothing reconnects, and ``aclose`` is bounded by
    the retire deadline, not by one confirm deadline per consumer (here 3 x 5 s) as a graceful close on a dead
    link would be. And the dead connection really is retired: once the network heals, it does not come back
    to life with its consumers (the broker sees it close)."""
    queues = [f"{prefix}.{name}" for name in ("a", "b", "c")]
    for queue in queues:
        amqp_cleanup(queue)
    async with TcpProxy("127.0.0.1", 5672) as proxy:
        bus = AmqpTransport(proxy.url("amqp", "/"), prefix=prefix, connect_timeout=1.0, confirm_timeout=5.0)
        await bus.start()
        try:
            work = Collector()
            for name in ("a", "b", "c"):
                await bus.subscribe(QueueSpec(("intent.#",), kind=QueueKind.DURABLE, name=name), work)
            await bus.publish("intent.capture.start", b"before", durable=True)
            await wait_until(lambda: len(work.bodies) == 3, 10, "the event on three queues")
            proxy.stall()
            in_flight = asyncio.ensure_future(bus.publish("intent.capture.stop", b"in flight", durable=True))
            await asyncio.sleep(0.05)  # the publish is written and waits for a confirm that cannot come
            assert not in_flight.done()
            began = time.monotonic()
            bus.abandon()
            assert not bus.connected
            with pytest.raises(TransportUnavailable):
                await in_flight
            for durable in (False, True):
                with pytest.raises(TransportUnavailable):
                    await bus.publish("intent.capture.stop", b"after", durable=durable)
            figure("publishes_fail_after_abandon_s", round(time.monotonic() - began, 3))
            assert time.monotonic() - began < 0.5
        finally:
            began = time.monotonic()
            await bus.aclose()
            closed_in = time.monotonic() - began
        proxy.heal()
        for queue in queues:
            await queue_until(rabbitmq, queue, lambda _messages, consumers: consumers == 0, timeout=15)
    figure("aclose_after_abandon_s", round(closed_in, 3))
    assert closed_in < 1.0 + 0.5, "closing an abandoned transport waited on the dead link"
    assert work.bodies == [b"before"] * 3, "a callback ran on the abandoned connection"

