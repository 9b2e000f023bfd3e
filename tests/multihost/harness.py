"""The multi-host cluster: ``thatdam up`` on hosts of a ``NetBed``, with no endpoint configured, finding the
infrastructure host by mDNS.

The infrastructure host ``i`` (10.77.<net>.2) runs the machine's RabbitMQ and Redis through ``forwarder`` (its
listening sockets live in the host's namespace, its upstream ones in the root namespace, where both servers
listen on 127.0.0.1 only) and ``thatdam advertise-infra``. The test itself stays in the root namespace: its event
log and Redis client talk to 127.0.0.1 directly, so they see everything the cluster does and are never cut.

Judging leadership per host: a node's own log says when it was elected (``elected leader at epoch N``) and
when it stopped (``stepped down at epoch N``, or its session ending), and in which kind of session (the
``up as <role> on AmqpTransport...`` line): ``leadership_terms`` reads the cluster-session terms out of it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from tests.cluster.harness import HEARTBEAT_S, PROBE_S, TTL_S, Cluster, ClusterNode, monotonic_of
from tests.multihost.netbed import Host, NetBed, kill_namespace
from tests.nodes import BIN
from tests.support import wait_until

REPO = Path(__file__).resolve().parents[2]
INFRA_OCTET = 2
_LINE = re.compile(r'^time=(?P<time>\S+) level=\S+ logger=\S+ msg="(?P<msg>.*)"')


@dataclass
class LogLine:
    at: float
    """On the test's monotonic clock (every namespace shares the machine's clock)."""
    msg: str


def log_lines(text: str) -> list[LogLine]:
    lines = []
    for raw in text.splitlines():
        match = _LINE.match(raw)
        if match:
            lines.append(LogLine(monotonic_of(datetime.fromisoformat(match["time"]).timestamp()), match["msg"]))
    return lines


@dataclass
class LoggedTerm:
    node_id: str
    epoch: int
    start: float
    end: float | None


def leadership_terms(node_id: str, text: str) -> list[LoggedTerm]:
    """The terms a node's log shows it leading a *cluster* session (a solo node leads its own local lease,
    which is not the cluster's). A term ends at its ``stepped down`` line, or when its session ends."""
    terms: list[LoggedTerm] = []
    in_cluster = False
    open_term: LoggedTerm | None = None
    for line in log_lines(text):
        if line.msg.startswith(f"node {node_id} up as "):
            in_cluster = "AmqpTransport" in line.msg
        elif (m := re.match(r"elected leader at epoch (\d+)", line.msg)) and in_cluster:
            open_term = LoggedTerm(node_id, int(m[1]), line.at, None)
            terms.append(open_term)
        elif open_term is not None and (line.msg.startswith("stepped down at epoch")
                                        or line.msg.startswith("session ended")):
            open_term.end, open_term = line.at, None
    return terms


def first_line(node: ClusterNode, needle: str, since: float = 0.0) -> LogLine | None:
    return next((line for line in log_lines(node.log()) if needle in line.msg and line.at >= since), None)


async def wait_line(node: ClusterNode, needle: str, since: float = 0.0, timeout: float = 15.0) -> LogLine:
    await wait_until(lambda: first_line(node, needle, since) is not None, timeout,
                     f"{needle!r} in the log of {node.node_id} (since {since:.3f})")
    found = first_line(node, needle, since)
    assert found is not None
    return found


class Records:
    """The output of ``tests.multihost.browse`` running on one host."""

    def __init__(self, path: Path, proc: subprocess.Popen[bytes]) -> None:
        self.path, self.proc = path, proc

    def all(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [orjson.loads(line) for line in self.path.read_bytes().splitlines() if line.strip()]

    def latest(self) -> dict[str, dict[str, str]]:
        """Instance name -> the properties of its newest version (withdrawn records dropped)."""
        current: dict[str, dict[str, str]] = {}
        for record in self.all():
            if record["state"] == "removed":
                current.pop(record["name"], None)
            else:
                current[record["name"]] = record["properties"]
        return current

    def of(self, node_id: str) -> dict[str, str] | None:
        return next((props for props in self.latest().values() if props.get("node_id") == node_id), None)


class MultiHostCluster(Cluster):
    """``Cluster`` whose nodes run on hosts of ``net`` with no endpoint set; ``aclose`` also removes the bed."""

    def __init__(self, net: NetBed, root: Path, prefix: str, amqp_url: str, redis_url: str) -> None:
        super().__init__(root, prefix, amqp_url, redis_url)
        self.net = net
        self.cluster_name = f"mh-{net.tag}"
        self.helpers: list[subprocess.Popen[bytes]] = []
        self.unlisted: set[str] = set()
        self._octets = 10

    def env(self, **overrides: str) -> dict[str, str]:
        env = {
            "THATDAM_PREFIX": self.prefix, "THATDAM_CLUSTER": self.cluster_name, "THATDAM_MDNS": "on",
            "THATDAM_LEASE_TTL": str(TTL_S), "THATDAM_HEARTBEAT_INTERVAL": str(HEARTBEAT_S),
            "THATDAM_PROBE_INTERVAL": str(PROBE_S), "THATDAM_SOURCES": "cam0=test://bars",
            "THATDAM_LOG_LEVEL": "INFO", "THATDAM_CONNECT_TIMEOUT": "1",
        }
        env.update(overrides)
        return env

    async def start_infra(self, *, plugged: bool = True) -> Host:
        """Host ``i``: the forwarders to RabbitMQ and Redis, and ``thatdam advertise-infra``."""
        host = self.net.add_host("i", INFRA_OCTET, plugged=plugged)
        ready = self.root / "forwarder.out"
        self._spawn([sys.executable, "-m", "tests.multihost.forwarder", host.netns, "5672=5672", "6379=6379"],
                    ready)
        await wait_until(lambda: b"ready" in ready.read_bytes(), 10, "the infra forwarder")
        advert = self.root / "advertise-infra.log"
        env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(self.root), **self.env()}
        self._spawn([*host.wrap(), str(BIN / "thatdam"), "advertise-infra"], advert, env)
        await wait_until(lambda: "mDNS: advertising" in advert.read_text(), 10, "advertise-infra to register")
        return host

    def start_on(self, name: str, *, plugged: bool = True, **env: str) -> tuple[Host, ClusterNode]:
        """A new host ``name`` on the bridge, running ``thatdam up`` with ``env`` on top of ``self.env()``."""
        self._octets += 1
        host = self.net.add_host(name, self._octets, plugged=plugged)
        node = ClusterNode(self.root, name, self.env(**env), wrap=host.wrap())
        if env.get("THATDAM_MDNS") == "off":
            self.unlisted.add(node.node_id)
        self.nodes.append(node)
        self.node_ids.add(node.node_id)
        return host, node

    def browse(self, name: str) -> Records:
        """An observer host ``name`` that records every thatdam record it sees."""
        self._octets += 1
        host = self.net.add_host(name, self._octets)
        out = self.root / f"records-{name}.jsonl"
        proc = self._spawn([*host.wrap(), sys.executable, "-m", "tests.multihost.browse", str(out)],
                           self.root / f"browse-{name}.log")
        return Records(out, proc)

    def live(self) -> list[ClusterNode]:
        """Live nodes that browse mDNS: the ones expected to join (``settled`` waits for these)."""
        return [n for n in super().live() if n.node_id not in self.unlisted]

    def host_of(self, node: ClusterNode) -> Host:
        return self.net.hosts[node.node_id.split("-", 1)[0]]

    async def leader_key(self) -> str | None:
        value = await self.redis.get(f"{self.prefix}:{self.cluster_name}:leader")
        return value.decode() if isinstance(value, bytes) else value

    def _spawn(self, argv: list[str], output: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with output.open("wb") as handle:
            proc = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        self.helpers.append(proc)
        return proc

    async def aclose(self) -> None:
        try:
            for proc in self.helpers:
                proc.terminate()
            for proc in self.helpers:
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            for host in self.net.hosts.values():
                kill_namespace(host.netns)
            await super().aclose()
        finally:
            self.net.close()
