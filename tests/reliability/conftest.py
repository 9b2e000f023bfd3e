"""Fixtures of the fault suite: a private RabbitMQ node that tests may crash (the shared one is never touched), and
``figure`` for measurements (the cluster suite's convention)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import ON_CI
from tests.reliability.private_broker import PrivateBroker, find_server
from tests.transports.conftest import kit  # every transport, for the limits tests

__all__ = ["kit", "private_broker"]





@pytest.fixture
async def private_broker(tmp_path: Path) -> AsyncIterator[PrivateBroker]:
    """A started private node, halted (or killed) at teardown; a skip locally without RabbitMQ installed."""
    server = find_server()
    if server is None:
        if ON_CI:
            pytest.fail("rabbitmq-server is not installed (CI=true: the broker-crash test must run)")
        pytest.skip("rabbitmq-server is not installed: no private node to crash")
    broker = PrivateBroker(server, tmp_path / "rabbitmq")
    broker.start()
    try:
        await broker.ready()
        yield broker
    finally:
        broker.stop()
