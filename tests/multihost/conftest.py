"""Fixtures for the multi-host tests: a fresh ``NetBed`` and ``MultiHostCluster`` per test, torn down in the
finalizer whatever happened (processes in the namespaces killed, veths, namespaces and bridge deleted, the
test's exchanges, queues and Redis keys removed). At teardown the event log must show no leadership violation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.cluster.terms import violations
from tests.multihost.harness import MultiHostCluster
from tests.multihost.netbed import NetBed, require_netns


@pytest.fixture
async def bed(rabbitmq: str, redis_url: str, prefix: str, tmp_path: Path) -> AsyncIterator[MultiHostCluster]:
    require_netns()
    net = NetBed()
    try:
        net.open()
        group = MultiHostCluster(net, tmp_path, prefix, rabbitmq, redis_url)
    except BaseException:
        net.close()
        raise
    try:
        await group.log.start()
        yield group
        ours = group.node_ids
        assert violations([seen for seen in group.log.seen if seen.sender in ours]) == []
    finally:
        await group.aclose()
