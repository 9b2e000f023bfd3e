"""Zero-configuration hosts find the infrastructure by mDNS: they form one cluster, a lone host joins when the
infrastructure comes onto its network, and ``THATDAM_MDNS=off`` keeps a node off mDNS entirely.

Every node host runs ``thatdam up`` with no THATDAM_AMQP_URL / THATDAM_REDIS_URL; the only way to the
infrastructure is the ``infra`` record that ``thatdam advertise-infra`` registers on host ``i``.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.cluster.harness import TTL_S
from tests.multihost.harness import MultiHostCluster, Records, first_line, wait_line
from tests.support import wait_until

pytestmark = pytest.mark.broker
Figure = Callable[[str, Any], None]
FORM_WITHIN_S = 10.0
SECRETS = ("guest", "@", "://", "password")
"""The nodes authenticate as guest/guest: neither word, nor anything URL-like, may appear in a record."""


def records_follow(records: Records, bed: MultiHostCluster, epoch: int) -> bool:
    """Every live node's record says what its cluster.json says (role, epoch) and the endpoints it uses."""
    endpoints = {"amqp": f"{bed.net.net}.2:5672", "redis": f"{bed.net.net}.2:6379"}
    for node in bed.live():
        props, view = records.of(node.node_id), node.cluster_file()
        if props is None or view is None or view.role == "solo":
            return False
        wanted = {"role": str(view.role), "epoch": str(epoch), "cluster": bed.cluster_name, **endpoints}
        if any(props.get(key) != value for key, value in wanted.items()):
            return False
    return True


async def test_three_zero_config_hosts_find_the_infrastructure_and_elect_one_leader(
        bed: MultiHostCluster, figure: Figure) -> None:
    await bed.start_infra()
    records = bed.browse("obs")
    started = time.monotonic()
    nodes = [bed.start_on(f"h{n}")[1] for n in (1, 2, 3)]
    _, quiet = bed.start_on("h4", THATDAM_MDNS="off")

    elected = await bed.elected(timeout=FORM_WITHIN_S)
    leader = elected.data["node_id"]
    await bed.settled(leader, timeout=FORM_WITHIN_S - (time.monotonic() - started))
    formed_s = time.monotonic() - started
    figure("one_cluster_one_leader_after_start_s", round(formed_s, 3))
    for node in nodes:
        adopted = first_line(node, "mDNS: adopting endpoints")
        assert adopted is not None and f"amqp={bed.net.net}.2:5672" in adopted.msg, node.log()  # any record
        figure(f"{node.node_id[:2]}_adopted_endpoints_after_start_s", round(adopted.at - started, 3))
        figure(f"{node.node_id[:2]}_adopted_endpoints_after_first_log_line_s",
               round(adopted.at - node.first_logged_at(), 3))
    assert formed_s <= FORM_WITHIN_S
    assert sorted(str(n.role()) for n in nodes) == ["leader", "worker", "worker"]
    assert {s.data["node_id"] for s in bed.log.of("cluster.leader.elected")} == {leader}

    # Each record tracks its node's role and epoch, with the adopted endpoints and never a credential.
    await wait_until(lambda: records_follow(records, bed, elected.data["epoch"]), 10, "records to follow the roles")
    infra = [p for p in records.latest().values() if p.get("role") == "infra"]
    assert infra and infra[0]["amqp"] == f"{bed.net.net}.2:5672" and infra[0]["cluster"] == bed.cluster_name
    for record in records.all():
        assert set(record.get("properties", {})) <= {"node_id", "cluster", "role", "epoch", "version", "amqp",
                                                      "redis"}
        text = " ".join(record.get("properties", {}).values()).lower()
        assert not any(secret in text for secret in SECRETS), record
    figure("record_versions_seen", len(records.all()))

    # A node that stops withdraws its record.
    gone = next(n for n in nodes if n.role() == "worker")
    gone.send(signal.SIGTERM)
    assert await gone.wait_exit() == 0
    await wait_until(lambda: records.of(gone.node_id) is None, 5, "the stopped node's record to be withdrawn")

    # THATDAM_MDNS=off: neither advertised (the observer saw every other node) nor browsing (still solo).
    await wait_line(quiet, f"node {quiet.node_id} up as solo")
    assert "mDNS off" in quiet.log()
    assert records.of(quiet.node_id) is None
    assert quiet.role() == "solo" and not bed.log.of(f"node.{quiet.node_id}.joined")


async def test_a_solo_host_joins_when_the_infrastructure_comes_onto_its_network(
        bed: MultiHostCluster, figure: Figure) -> None:
    infra = await bed.start_infra(plugged=False)
    _, node = bed.start_on("h1")
    await wait_line(node, f"node {node.node_id} up as solo")
    assert first_line(node, "mDNS: adopting endpoints") is None
    pid = node.pid

    plugged_at = bed.net.plug(infra)
    seen = await wait_line(node, "mDNS: adopting endpoints", timeout=20)
    joined = await bed.log.first(f"node.{node.node_id}.joined", timeout=2 * TTL_S + 10,
                                 where=lambda s: s.data["role"] != "solo")
    figure("infra_record_seen_after_plug_s", round(seen.at - plugged_at, 3))
    figure("joined_after_record_seen_s", round(joined.sent_at - seen.at, 3))
    assert joined.sent_at - seen.at <= 2 * TTL_S
    assert node.alive and node.pid == pid, "joined without a restart"
    assert "session ended: infrastructure appeared" in node.log()
    await bed.settled(node.node_id)
